"""The values of the step use case: a request, its settings, its answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adamhub_service import errors, optim
from adamhub_service.model.records import SessionRecord
from adamhub_service.optim import AdamConfig, AdamState, FloatArray, with_changes
from adamhub_service.steps.commit import Report, off_the_loop


@dataclass(frozen=True, slots=True)
class StepResult:
    """The outcome of a step request."""

    record: SessionRecord
    params: FloatArray
    applied_t: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class StepSettings:
    """Hyperparameters a step carries for itself and the steps after it: changes to
    the optimizer's fields, and per param group in order."""

    optimizer: dict[str, Any]
    param_groups: list[dict[str, Any]] | None = None

    def applied_to(self, config: AdamConfig) -> AdamConfig:
        """``config`` with these changes; 422 when they do not fit it."""
        try:
            return with_changes(config, self.optimizer, self.param_groups)
        except ValueError as exc:
            raise errors.ValidationFailed(
                str(exc), errors=[{"loc": ["settings"], "msg": str(exc)}]
            ) from exc


@dataclass(frozen=True, slots=True)
class StepRequest:
    """A gradient's request apart from its body: its Idempotency-Key, the settings it
    carries, the step it was computed at, the samples it stands for (rounds), what its
    worker reports, how long it waits for its round, its wire dtype's item size, and the
    segments it carries (a partial step)."""

    idempotency_key: str | None = None
    settings: StepSettings | None = None
    base_step: int | None = None
    samples: int = 1
    report: Report = field(default_factory=Report)
    wait_seconds: float = 0.0
    wire_itemsize: int | None = None
    # A partial step: the segments (tensors) its body holds, increasing.
    segments: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class RoundPending:
    """A contribution that is in, in a round that did not close within the wait: the
    session's ``t``, the step the round will produce, what it holds and still needs
    (contributions, or samples with ``target_samples``)."""

    t: int
    round: int
    contributions: int
    needed: int


async def compute_step(
    state: AdamState,
    gradient: FloatArray,
    config: AdamConfig,
    present: tuple[int, ...] | None = None,
) -> AdamState:
    """One Adam step (of the ``present`` segments only, when given); in a worker thread
    for a large state (the kernel releases the GIL)."""
    return await off_the_loop(state.size, optim.adam_step, state, gradient, config, present)
