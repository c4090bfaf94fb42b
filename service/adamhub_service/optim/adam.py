"""Adam and AdamW as pure functions over numpy arrays.

Adam is the method of Kingma & Ba, "Adam: A Method for Stochastic Optimization"
(ICLR 2015, arXiv:1412.6980); decoupled weight decay (AdamW) is that of Loshchilov &
Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019, arXiv:1711.05101); AMSGrad
is that of Reddi et al., "On the Convergence of Adam and Beyond" (ICLR 2018).

The arithmetic follows the order of operations of ``torch.optim.Adam``'s single-tensor
implementation, with every scalar rounded to the state's dtype first, so that results
agree with torch to float rounding; it runs as one compiled pass (``kernel``). This
module does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from adamhub_service.errors import NonFiniteUpdate
from adamhub_service.optim import kernel

FloatArray = npt.NDArray[np.floating]


@dataclass(frozen=True, slots=True)
class Bound:
    """The allowed range of one hyperparameter (the bounds that are given apply)."""

    ge: float | None = None
    gt: float | None = None
    lt: float | None = None

    def problem(self, name: str, value: float) -> str | None:
        """Why ``value`` is out of range, or None when it is in range."""
        if not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
        if self.ge is not None and not value >= self.ge:
            return f"{name} must be >= {self.ge}, got {value}"
        if self.gt is not None and not value > self.gt:
            return f"{name} must be > {self.gt}, got {value}"
        if self.lt is not None and not value < self.lt:
            return f"{name} must be < {self.lt}, got {value}"
        return None

    def as_field(self) -> dict[str, float]:
        """The bounds as keyword arguments of ``pydantic.Field`` (for JSON Schema too)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


# The one rule set for hyperparameters: the API's models and ``AdamConfig`` both use it.
LR = Bound(ge=0.0)
BETA = Bound(ge=0.0, lt=1.0)
EPS = Bound(gt=0.0)
WEIGHT_DECAY = Bound(ge=0.0)


@dataclass(frozen=True, slots=True)
class AdamConfig:
    """Hyperparameters of Adam, named as in torch, with the paper's and torch's defaults."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    amsgrad: bool = False
    maximize: bool = False

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every way in which these values are out of range (empty when valid)."""
        checks = [
            LR.problem("lr", self.lr),
            BETA.problem("betas[0]", self.betas[0]),
            BETA.problem("betas[1]", self.betas[1]),
            EPS.problem("eps", self.eps),
            WEIGHT_DECAY.problem("weight_decay", self.weight_decay),
        ]
        return [problem for problem in checks if problem is not None]

    def evolve(self, **changes: Any) -> AdamConfig:
        """A copy with some fields changed (checked like a new one)."""
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class AdamState:
    """The optimiser state of one parameter vector after ``step`` updates.

    ``max_exp_avg_sq`` is the running maximum of ``exp_avg_sq`` and exists only with
    AMSGrad. All arrays are flat and share one dtype.
    """

    params: FloatArray
    exp_avg: FloatArray
    exp_avg_sq: FloatArray
    max_exp_avg_sq: FloatArray | None
    step: int

    @property
    def dtype(self) -> np.dtype[np.floating]:
        """The dtype of every array of the state."""
        return self.params.dtype

    @property
    def size(self) -> int:
        """The number of parameters."""
        return int(self.params.size)


def init_state(params: FloatArray, config: AdamConfig) -> AdamState:
    """The state before the first step: zero moments, step 0."""
    zeros = np.zeros_like(params)
    return AdamState(
        params=params,
        exp_avg=zeros,
        exp_avg_sq=zeros.copy(),
        max_exp_avg_sq=zeros.copy() if config.amsgrad else None,
        step=0,
    )


def adam_step(state: AdamState, grad: FloatArray, config: AdamConfig) -> AdamState:
    """One Adam update: the state after applying ``grad`` to ``state``.

    ``grad`` must have the state's size and dtype. The input state is not modified.
    Raises ``NonFiniteUpdate`` when a new parameter or moment would be NaN or infinite.

    The arithmetic is one fused pass (``kernel``) doing, per element and in the state's
    dtype, what torch's single-tensor Adam does with whole tensors::

        g ← −g (maximize);  g ← g + λθ (weight decay) or θ ← θ(1 − αλ) (decoupled)
        m ← m + (1 − β₁)(g − m);  v ← β₂v + (1 − β₂)g²;  v̂ ← max(v̂, v) (AMSGrad)
        θ ← θ − α/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
    """
    dtype = state.dtype
    scalar = dtype.type
    step = state.step + 1
    beta1, beta2 = config.betas
    decay_mode, decay = kernel.NO_DECAY, scalar(0)
    if config.weight_decay != 0:
        if config.decoupled_weight_decay:
            decay_mode, decay = kernel.DECOUPLED_DECAY, scalar(1 - config.lr * config.weight_decay)
        else:
            decay_mode, decay = kernel.COUPLED_DECAY, scalar(config.weight_decay)
    step_size = config.lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5

    params = np.ascontiguousarray(state.params)
    grad = np.ascontiguousarray(grad, dtype=dtype)
    out = AdamState(
        params=np.empty_like(params),
        exp_avg=np.empty_like(params),
        exp_avg_sq=np.empty_like(params),
        max_exp_avg_sq=np.empty_like(params) if config.amsgrad else None,
        step=step,
    )
    no_max = np.empty(0, dtype)
    previous_max = state.max_exp_avg_sq
    if config.amsgrad and previous_max is None:
        previous_max = np.zeros_like(params)
    not_finite = kernel.fused_update(
        params,
        np.ascontiguousarray(state.exp_avg),
        np.ascontiguousarray(state.exp_avg_sq),
        no_max if previous_max is None else np.ascontiguousarray(previous_max),
        grad,
        out.params,
        out.exp_avg,
        out.exp_avg_sq,
        no_max if out.max_exp_avg_sq is None else out.max_exp_avg_sq,
        scalars=(
            config.maximize,
            decay_mode,
            decay,
            scalar(1 - beta1),
            scalar(beta2),
            scalar(1 - beta2),
            scalar(bias_correction2_sqrt),
            scalar(config.eps),
            scalar(-step_size),
            config.amsgrad,
        ),
    )
    if not_finite:
        _require_finite(out)
    return out


def _require_finite(state: AdamState) -> None:
    # exp_avg is a convex combination of finite gradients and params, so it is
    # checked last; exp_avg_sq can overflow on its own through g * g.
    for name, vector in (
        ("params", state.params),
        ("exp_avg_sq", state.exp_avg_sq),
        ("exp_avg", state.exp_avg),
    ):
        finite = np.isfinite(vector)
        if not finite.all():
            raise NonFiniteUpdate(name, int(np.argmin(finite)))
