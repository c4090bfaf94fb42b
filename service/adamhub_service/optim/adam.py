"""Adam and AdamW as pure functions over numpy arrays.

Adam is the method of Kingma & Ba, "Adam: A Method for Stochastic Optimization"
(ICLR 2015, arXiv:1412.6980); decoupled weight decay (AdamW) is that of Loshchilov &
Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019, arXiv:1711.05101); AMSGrad
is that of Reddi et al., "On the Convergence of Adam and Beyond" (ICLR 2018).

The arithmetic follows the order of operations of ``torch.optim.Adam``'s single-tensor
implementation, with every scalar rounded to the state's dtype first, so that results
agree with torch to float rounding. This module does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from adamhub_service.errors import NonFiniteUpdate

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
    """
    with np.errstate(over="ignore", invalid="ignore"):
        new_state = _step(state, grad, config)
    _require_finite(new_state)
    return new_state


def _step(state: AdamState, grad: FloatArray, config: AdamConfig) -> AdamState:
    dtype = state.dtype
    scalar = dtype.type
    step = state.step + 1
    beta1, beta2 = config.betas

    if config.maximize:
        grad = -grad
    params = state.params
    if config.weight_decay != 0:
        if config.decoupled_weight_decay:
            params = params * scalar(1 - config.lr * config.weight_decay)
        else:
            grad = grad + params * scalar(config.weight_decay)

    # torch: exp_avg.lerp_(grad, 1 - beta1), i.e. m + w * (g - m)
    exp_avg = grad - state.exp_avg
    exp_avg *= scalar(1 - beta1)
    exp_avg += state.exp_avg
    # torch: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg_sq = state.exp_avg_sq * scalar(beta2)
    exp_avg_sq += scalar(1 - beta2) * grad * grad

    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = config.lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5

    max_exp_avg_sq = None
    if config.amsgrad:
        previous_max = state.max_exp_avg_sq
        max_exp_avg_sq = (
            exp_avg_sq.copy() if previous_max is None else np.maximum(previous_max, exp_avg_sq)
        )
        denom = np.sqrt(max_exp_avg_sq)
    else:
        denom = np.sqrt(exp_avg_sq)
    denom /= scalar(bias_correction2_sqrt)
    denom += scalar(config.eps)

    # torch: param.addcdiv_(exp_avg, denom, value=-step_size), i.e. p + (v * m) / d
    update = scalar(-step_size) * exp_avg
    update /= denom
    new_params = params + update

    return AdamState(
        params=new_params,
        exp_avg=exp_avg,
        exp_avg_sq=exp_avg_sq,
        max_exp_avg_sq=max_exp_avg_sq,
        step=step,
    )


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
