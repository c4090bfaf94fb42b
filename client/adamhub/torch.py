"""``RemoteAdam``: a ``torch.optim.Optimizer`` whose state lives in an adamhub session.

    opt = RemoteAdam(model.parameters(), client=client, lr=1e-3)
    for batch in data:
        opt.zero_grad()
        loss(model, batch).backward()
        opt.step()

Needs ``adamhub[torch]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from adamhub._client import Client
from adamhub._config import AdamConfig
from adamhub._session import Session

_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize")
_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


class RemoteAdam(torch.optim.Optimizer):
    """Adam (or AdamW) computed by an adamhub service, as a drop-in torch optimizer.

    Without ``session``, a new session is created from the current parameters. With
    ``session`` (an id or a ``Session``), the optimizer attaches to it and the model's
    parameters are overwritten with the session's. Every ``step()`` sends all gradients
    as one vector (with an Idempotency-Key, so retries are applied once) and writes the
    returned parameters back in place. Changing ``param_groups[0]["lr"]`` (as learning
    rate schedulers do) changes the session's settings before the next step.

    All parameters form one session: one param group, one dtype (float32 or float64).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        client: Client,
        session: Session | str | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        amsgrad: bool = False,
        maximize: bool = False,
        name: str | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
        }
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("RemoteAdam keeps one session: pass a single param group")
        tensors = self._tensors()
        dtypes = {p.dtype for p in tensors}
        if len(dtypes) != 1 or next(iter(dtypes)) not in _DTYPES:
            raise TypeError(
                f"RemoteAdam needs parameters of one dtype, float32 or float64; got {dtypes}"
            )
        self._dtype = _DTYPES[next(iter(dtypes))]
        self._size = sum(p.numel() for p in tensors)
        if session is None:
            self.session = client.create_session(
                self._flat(p.detach() for p in tensors),
                dtype=self._dtype,
                optimizer=AdamConfig(
                    **{k: self.param_groups[0][k] for k in (*_HYPERPARAMETERS, "amsgrad")}
                ),
                name=name,
            )
        else:
            self.session = client.session(session) if isinstance(session, str) else session
            if self.session.size != self._size:
                raise ValueError(
                    f"the session has {self.session.size} parameters; the model has {self._size}"
                )
            self._write_back(self.session.params())
        self._sent = self._hyperparameters()

    def _tensors(self) -> list[torch.Tensor]:
        return list(self.param_groups[0]["params"])

    def _hyperparameters(self) -> dict[str, Any]:
        group = self.param_groups[0]
        return {
            key: tuple(group[key]) if key == "betas" else group[key] for key in _HYPERPARAMETERS
        }

    def _flat(self, tensors: Iterable[torch.Tensor]) -> np.ndarray:
        return torch.cat([t.reshape(-1).to("cpu") for t in tensors]).numpy()

    @torch.no_grad()
    def _write_back(self, flat: np.ndarray) -> None:
        values = torch.from_numpy(flat)
        offset = 0
        for param in self._tensors():
            count = param.numel()
            param.copy_(values[offset : offset + count].view_as(param))
            offset += count

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Send the gradients, apply the update remotely, copy the new parameters in."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gradients = []
        for index, param in enumerate(self._tensors()):
            if param.grad is None:
                raise RuntimeError(
                    f"parameter {index} has no gradient: RemoteAdam steps every parameter "
                    "of its session (call backward() first, or leave frozen parameters out)"
                )
            if param.grad.is_sparse:
                raise RuntimeError(
                    "RemoteAdam does not support sparse gradients, "
                    "please consider SparseAdam instead"
                )
            gradients.append(param.grad)
        current = self._hyperparameters()
        if current != self._sent:
            changed = {k: v for k, v in current.items() if self._sent.get(k) != v}
            self.session.update(**changed)
            self._sent = current
        self._write_back(self.session.step(self._flat(gradients)))
        return loss
