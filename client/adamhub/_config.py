"""Adam's hyperparameters, as the SDK sends them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class AdamConfig:
    """Settings of a session's optimizer, with torch's defaults.

    ``decoupled_weight_decay=True`` is AdamW (Loshchilov & Hutter); ``amsgrad`` is fixed
    when a session is created.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    amsgrad: bool = False
    maximize: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON object the API takes."""
        values = asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdamConfig:
        """From the API's JSON object (unknown members are ignored)."""
        known = {f.name for f in fields(cls)}
        kept = {key: value for key, value in values.items() if key in known}
        if "betas" in kept:
            kept["betas"] = tuple(kept["betas"])
        return cls(**kept)
