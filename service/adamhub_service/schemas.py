"""Request and response documents of the HTTP API, for validation and for OpenAPI.

Large vectors (``params``, ``gradient``) are taken out of a body before validation
and parsed by the codec; the models still declare them so the OpenAPI document is whole.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adamhub_service.optim import AdamConfig
from adamhub_service.records import SessionRecord

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
_STRICT = ConfigDict(extra="forbid", strict=True)


class OptimizerSettings(BaseModel):
    """Adam's hyperparameters; every field optional, with torch's defaults."""

    model_config = _STRICT

    lr: FiniteFloat = Field(default=1e-3, ge=0, description="Learning rate α.")
    betas: tuple[FiniteFloat, FiniteFloat] = Field(
        default=(0.9, 0.999), description="β1, β2: decay rates of the moments, each in [0, 1)."
    )
    eps: FiniteFloat = Field(default=1e-8, gt=0, description="ε added to √v̂.")
    weight_decay: FiniteFloat = Field(default=0.0, ge=0)
    decoupled_weight_decay: bool = Field(
        default=False, description="true: AdamW (Loshchilov & Hutter); false: L2 in the gradient."
    )
    amsgrad: bool = False
    maximize: bool = False

    @model_validator(mode="after")
    def _betas_in_range(self) -> OptimizerSettings:
        for index, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise ValueError(f"betas[{index}] must be in [0, 1), got {beta}")
        return self

    def config(self) -> AdamConfig:
        """As the optimiser's config."""
        return AdamConfig(**optimizer_fields(self.model_dump(exclude_unset=False)))


class OptimizerPatch(BaseModel):
    """Any subset of the optimizer settings."""

    model_config = _STRICT

    lr: FiniteFloat | None = Field(default=None, ge=0)
    betas: tuple[FiniteFloat, FiniteFloat] | None = None
    eps: FiniteFloat | None = Field(default=None, gt=0)
    weight_decay: FiniteFloat | None = Field(default=None, ge=0)
    decoupled_weight_decay: bool | None = None
    amsgrad: bool | None = None
    maximize: bool | None = None

    def changes(self) -> dict[str, Any]:
        """The given fields, as ``AdamConfig`` field names."""
        return optimizer_fields(self.model_dump(exclude_none=True))


class ZerosInit(BaseModel):
    """All parameters zero."""

    model_config = _STRICT
    kind: Literal["zeros"]


class NormalInit(BaseModel):
    """Parameters drawn from N(mean, std²) with numpy's PCG64 generator."""

    model_config = _STRICT
    kind: Literal["normal"]
    mean: FiniteFloat = 0.0
    std: FiniteFloat = Field(default=1.0, ge=0)
    seed: int | None = Field(default=None, ge=0, description="Random when omitted.")


Metadata = Annotated[dict[str, Any], Field(description="Free JSON object, kept as given.")]
Name = Annotated[str, Field(max_length=256)]


class SessionCreate(BaseModel):
    """Body of ``POST /v1/sessions``: exactly one of ``params`` and ``size``."""

    model_config = _STRICT

    params: list[float] | None = Field(default=None, description="Initial parameters.")
    size: int | None = Field(default=None, ge=1)
    init: ZerosInit | NormalInit | None = Field(default=None, discriminator="kind")
    dtype: Literal["float32", "float64"] = "float32"
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    name: Name | None = None
    metadata: Metadata = Field(default_factory=dict)


class SessionPatch(BaseModel):
    """Body of ``PATCH /v1/sessions/{id}``."""

    model_config = _STRICT

    optimizer: OptimizerPatch | None = None
    name: Name | None = None
    metadata: Metadata | None = None


class OptimizerOut(BaseModel):
    """Every optimizer setting of a session."""

    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    decoupled_weight_decay: bool
    amsgrad: bool
    maximize: bool


class SessionOut(BaseModel):
    """A session resource."""

    id: str
    name: str | None
    size: int
    dtype: str
    t: int
    optimizer: OptimizerOut
    metadata: dict[str, Any]
    created_at: str
    updated_at: str


class SessionList(BaseModel):
    """A page of sessions, oldest first."""

    sessions: list[SessionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class ParamsOut(BaseModel):
    """Parameters at step ``t``."""

    t: int
    params: list[float]


class ParamsIn(BaseModel):
    """Body of ``PUT /v1/sessions/{id}/params`` as JSON."""

    params: list[float]


class StepIn(BaseModel):
    """Body of ``POST /v1/sessions/{id}/step`` as JSON."""

    gradient: list[float]


class StepOut(BaseModel):
    """Result of a step: ``params`` is omitted with ``?return=none``."""

    t: int = Field(description="The step of the parameters returned (the newest).")
    applied_t: int = Field(description="The step this gradient produced.")
    params: list[float] | None = None


class Problem(BaseModel):
    """An RFC 9457 problem document (extra members vary by type)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str


def optimizer_fields(values: dict[str, Any]) -> dict[str, Any]:
    """API optimizer fields (``betas``) as ``AdamConfig`` fields (``beta1``, ``beta2``)."""
    values = dict(values)
    betas = values.pop("betas", None)
    if betas is not None:
        values["beta1"], values["beta2"] = betas
    return values


def optimizer_out(config: AdamConfig) -> dict[str, Any]:
    """``AdamConfig`` as the API shows it."""
    return {
        "lr": config.lr,
        "betas": [config.beta1, config.beta2],
        "eps": config.eps,
        "weight_decay": config.weight_decay,
        "decoupled_weight_decay": config.decoupled_weight_decay,
        "amsgrad": config.amsgrad,
        "maximize": config.maximize,
    }


def session_out(record: SessionRecord) -> dict[str, Any]:
    """A session record as the API shows it."""
    return {
        "id": record.id,
        "name": record.name,
        "size": record.size,
        "dtype": record.dtype,
        "t": record.t,
        "optimizer": optimizer_out(record.optimizer),
        "metadata": record.metadata,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }
