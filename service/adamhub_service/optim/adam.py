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

import itertools
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
MAX_GRAD_NORM = Bound(gt=0.0)
FINAL_LR_RATIO = Bound(ge=0.0)
# What torch.nn.utils.clip_grad_norm_ adds to the norm before dividing by it.
CLIP_EPSILON = 1e-6
SCHEDULE_KINDS = ("constant", "warmup_cosine", "warmup_linear")


@dataclass(frozen=True, slots=True)
class Schedule:
    """The learning rate's factor f(t) for step t = 1, 2, …: constant 1, or a linear
    warmup over ``warmup_steps`` then a cosine or linear decay to ``final_lr_ratio`` at
    ``total_steps``, and that ratio after."""

    kind: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0
    final_lr_ratio: float = 0.0

    def problems(self) -> list[str]:
        """Every way in which the schedule is invalid."""
        if self.kind not in SCHEDULE_KINDS:
            return [f"schedule.kind must be one of {', '.join(SCHEDULE_KINDS)}"]
        if self.kind == "constant":
            return []
        found = []
        if self.warmup_steps < 0:
            found.append("schedule.warmup_steps must be >= 0")
        if self.total_steps <= self.warmup_steps:
            found.append("schedule.total_steps must be > warmup_steps")
        ratio = FINAL_LR_RATIO.problem("schedule.final_lr_ratio", self.final_lr_ratio)
        return found + ([ratio] if ratio else [])

    def factor(self, t: int) -> float:
        """f(t), the factor of the learning rate at step ``t``."""
        if self.kind == "constant":
            return 1.0
        warmup, total, ratio = self.warmup_steps, self.total_steps, self.final_lr_ratio
        if t <= warmup:
            return t / warmup
        if t >= total:
            return ratio
        progress = (t - warmup) / (total - warmup)
        if self.kind == "warmup_cosine":
            return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return ratio + (1 - ratio) * (1 - progress)


@dataclass(frozen=True, slots=True)
class ParamGroup:
    """A consecutive segment of ``size`` parameters with its own hyperparameters; a
    field left None takes the session's value (torch's param groups)."""

    size: int
    lr: float | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = None
    weight_decay: float | None = None
    decoupled_weight_decay: bool | None = None
    maximize: bool | None = None

    def overrides(self) -> dict[str, Any]:
        """The fields this group sets."""
        return {
            name: getattr(self, name) for name in GROUP_FIELDS if getattr(self, name) is not None
        }


# The hyperparameters a param group may set (amsgrad, the schedule and clipping are the
# session's).
GROUP_FIELDS = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize")


@dataclass(frozen=True, slots=True)
class AdamConfig:
    """Hyperparameters of Adam, named as in torch, with the paper's and torch's defaults;
    plus a learning-rate ``schedule``, gradient clipping by global norm
    (``max_grad_norm``, as ``torch.nn.utils.clip_grad_norm_``) and ``param_groups``."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    amsgrad: bool = False
    maximize: bool = False
    schedule: Schedule = Schedule()
    max_grad_norm: float | None = None
    param_groups: tuple[ParamGroup, ...] = ()
    # The sizes of the parameter tensors, in order (empty: one tensor). A step may carry
    # some of them only; each keeps its own step count, as torch's per-parameter state.
    segment_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every way in which these values are out of range (empty when valid)."""
        found = _bound_problems("", _bounded_fields(self))
        if self.max_grad_norm is not None:
            found += _bound_problems("", {"max_grad_norm": self.max_grad_norm})
        found += self.schedule.problems()
        for index, group in enumerate(self.param_groups):
            prefix = f"param_groups[{index}]."
            if group.size < 1:
                found.append(f"{prefix}size must be >= 1")
            found += _bound_problems(prefix, group.overrides())
        if any(size < 1 for size in self.segment_sizes):
            found.append("segments must each be >= 1")
        elif self.segment_sizes and self.param_groups:
            ends = set(itertools.accumulate(self.segment_sizes))
            if not set(itertools.accumulate(g.size for g in self.param_groups)) <= ends:
                found.append("each param group must be whole segments (tensors), in order")
        return found

    def evolve(self, **changes: Any) -> AdamConfig:
        """A copy with some fields changed (checked like a new one)."""
        return replace(self, **changes)

    def tensor_ranges(self, size: int) -> list[tuple[int, int]]:
        """Each segment (tensor) as (start, stop); the whole vector when none are set."""
        if not self.segment_sizes:
            return [(0, size)]
        starts = [0, *itertools.accumulate(self.segment_sizes)]
        return list(itertools.pairwise(starts))

    def segments(self, size: int) -> list[tuple[int, int, AdamConfig]]:
        """Each param group as (start, stop, its hyperparameters); the whole vector when
        there are no groups."""
        if not self.param_groups:
            return [(0, size, self)]
        segments, start = [], 0
        for group in self.param_groups:
            stop = start + group.size
            segments.append((start, stop, replace(self, param_groups=(), **group.overrides())))
            start = stop
        if start != size:
            raise ValueError(f"param_groups cover {start} parameters; the session has {size}")
        return segments


def with_changes(
    config: AdamConfig, changes: dict[str, Any], group_changes: list[dict[str, Any]] | None
) -> AdamConfig:
    """``config`` with ``changes`` to its fields and, per param group in order,
    ``group_changes`` (ValueError when they do not fit: another number of groups, or a
    value out of range)."""
    updates = dict(changes)
    if group_changes is not None:
        groups = config.param_groups
        if len(group_changes) != len(groups):
            raise ValueError(
                f"param_groups has {len(group_changes)} entries; the session has "
                f"{len(groups)} groups (their number and sizes are fixed at creation)"
            )
        updates["param_groups"] = tuple(
            replace(group, **change) for group, change in zip(groups, group_changes, strict=True)
        )
    return config.evolve(**updates)


def _bounded_fields(config: AdamConfig) -> dict[str, Any]:
    """The bounded hyperparameters of a config, by name."""
    return {name: getattr(config, name) for name in ("lr", "betas", "eps", "weight_decay")}


_BOUNDS = {"lr": LR, "eps": EPS, "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM}


def _bound_problems(prefix: str, values: dict[str, Any]) -> list[str]:
    found = []
    for name, value in values.items():
        if name == "betas":
            checks = [BETA.problem(f"{prefix}betas[{i}]", value[i]) for i in (0, 1)]
        elif name in _BOUNDS:
            checks = [_BOUNDS[name].problem(prefix + name, value)]
        else:
            continue
        found += [problem for problem in checks if problem is not None]
    return found


@dataclass(frozen=True, slots=True)
class AdamState:
    """The optimiser state of one parameter vector after ``step`` updates.

    ``max_exp_avg_sq`` is the running maximum of ``exp_avg_sq`` and exists only with
    AMSGrad. All arrays are flat and share one dtype. ``segment_steps`` are the step
    counts of the segments (tensors) when they differ from ``step`` (partial steps);
    None when every segment has taken every step.
    """

    params: FloatArray
    exp_avg: FloatArray
    exp_avg_sq: FloatArray
    max_exp_avg_sq: FloatArray | None
    step: int
    segment_steps: tuple[int, ...] | None = None

    def steps_of(self, segments: int) -> tuple[int, ...]:
        """The step count of each of ``segments`` segments."""
        if self.segment_steps is None:
            return (self.step,) * segments
        return self.segment_steps

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


def adam_step(
    state: AdamState,
    grad: FloatArray,
    config: AdamConfig,
    present: tuple[int, ...] | None = None,
) -> AdamState:
    """One Adam update: the state after applying ``grad`` to ``state``.

    ``grad`` must have the state's dtype, and its size: or, with ``present`` (the
    indices of the segments the step carries, increasing), the size of those segments,
    whose gradients it holds one after another. Segments left out keep θ, m, v and their
    step count, as torch skips a parameter whose ``grad`` is None; each carried segment's
    bias correction uses its own count. The input state is not modified. Raises
    ``NonFiniteUpdate`` when a new parameter or moment would be NaN or infinite.

    With ``max_grad_norm``, the gradient is first scaled by max_norm / (‖g‖₂ + 1e-6)
    when that is below 1 (``clip_grad_norm_``, over the gradients carried); each param
    group's learning rate is its ``lr`` times the schedule's f(t), t the session's step.
    The arithmetic is one fused pass (``kernel``) per group (per run of segments with
    one step count) doing, per element and in the state's dtype, what torch's
    single-tensor Adam does with whole tensors::

        g ← −g (maximize);  g ← g + λθ (weight decay) or θ ← θ(1 − αλ) (decoupled)
        m ← m + (1 − β₁)(g − m);  v ← β₂v + (1 − β₂)g²;  v̂ ← max(v̂, v) (AMSGrad)
        θ ← θ − α/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
    """
    dtype = state.dtype
    step = state.step + 1
    grad = np.ascontiguousarray(grad, dtype=dtype)
    if config.max_grad_norm is not None:
        norm = math.sqrt(kernel.squared_norm(grad))
        coefficient = config.max_grad_norm / (norm + CLIP_EPSILON)
        if coefficient < 1:
            grad = grad * dtype.type(coefficient)
    params = np.ascontiguousarray(state.params)
    exp_avg = np.ascontiguousarray(state.exp_avg)
    exp_avg_sq = np.ascontiguousarray(state.exp_avg_sq)
    previous_max = state.max_exp_avg_sq
    if config.amsgrad:
        previous_max = (
            np.zeros_like(params) if previous_max is None else np.ascontiguousarray(previous_max)
        )
    ranges = config.tensor_ranges(state.size)
    counts = list(state.steps_of(len(ranges)))
    carried = range(len(ranges)) if present is None else present
    for index in carried:
        counts[index] += 1
    partial = present is not None and len(present) < len(ranges)
    out = AdamState(
        params=params.copy() if partial else np.empty_like(params),
        exp_avg=exp_avg.copy() if partial else np.empty_like(params),
        exp_avg_sq=exp_avg_sq.copy() if partial else np.empty_like(params),
        max_exp_avg_sq=None
        if previous_max is None
        else (previous_max.copy() if partial else np.empty_like(params)),
        step=step,
        segment_steps=None if all(count == step for count in counts) else tuple(counts),
    )
    no_max = np.empty(0, dtype)
    factor = config.schedule.factor(step)
    not_finite = 0
    for start, stop, group, offset, count in _runs(config, state.size, ranges, counts, present):
        part, given = slice(start, stop), slice(offset, offset + stop - start)
        not_finite += kernel.fused_update(
            params[part],
            exp_avg[part],
            exp_avg_sq[part],
            no_max if previous_max is None else previous_max[part],
            grad[given],
            out.params[part],
            out.exp_avg[part],
            out.exp_avg_sq[part],
            no_max if out.max_exp_avg_sq is None else out.max_exp_avg_sq[part],
            scalars=_scalars(group, count, group.lr * factor, dtype),
        )
    if not_finite:
        _require_finite(out)
    return out


def _runs(
    config: AdamConfig,
    size: int,
    ranges: list[tuple[int, int]],
    counts: list[int],
    present: tuple[int, ...] | None,
) -> list[tuple[int, int, AdamConfig, int, int]]:
    """What one step updates, as runs (start, stop, group config, offset of the run in
    the carried gradient, step count): each param group, split where a segment is left
    out or has another step count. A full step of segments with one count: one run per
    group."""
    groups = config.segments(size)
    if present is None and len(set(counts)) == 1:
        return [(start, stop, group, start, counts[0]) for start, stop, group in groups]
    carried = range(len(ranges)) if present is None else present
    runs: list[tuple[int, int, AdamConfig, int, int]] = []
    offset = 0
    group_index = 0
    for index in carried:
        start, stop = ranges[index]
        while groups[group_index][1] <= start:
            group_index += 1
        group = groups[group_index][2]
        last = runs[-1] if runs else None
        if last and last[1] == start and last[2] is group and last[4] == counts[index]:
            runs[-1] = (last[0], stop, group, last[3], last[4])
        else:
            runs.append((start, stop, group, offset, counts[index]))
        offset += stop - start
    return runs


def _scalars(config: AdamConfig, step: int, lr: float, dtype: np.dtype[Any]) -> tuple[Any, ...]:
    """The kernel's flags and coefficients for one group at ``step``, rounded to the
    state's dtype as torch rounds them to the tensor's."""
    scalar = dtype.type
    beta1, beta2 = config.betas
    decay_mode, decay = kernel.NO_DECAY, scalar(0)
    if config.weight_decay != 0:
        if config.decoupled_weight_decay:
            decay_mode, decay = kernel.DECOUPLED_DECAY, scalar(1 - lr * config.weight_decay)
        else:
            decay_mode, decay = kernel.COUPLED_DECAY, scalar(config.weight_decay)
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    weight = scalar(1 - beta1)  # torch's lerp weight, in the tensor's dtype
    return (
        config.maximize,
        decay_mode,
        decay,
        weight,
        bool(abs(weight) < 0.5),
        scalar(1) - weight,
        scalar(beta2),
        scalar(1 - beta2),
        scalar(bias_correction2_sqrt),
        scalar(config.eps),
        scalar(-step_size),
        config.amsgrad,
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
