"""The one commit path of every step: a plain group of steps and a round's close.

Steps computed from one cached state are added to a ``Commit`` in order; it makes each
step's log entry (with its config when that changed) and history point, the new record,
and logs them all with one compare-and-set (``SessionRepository.append``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from adamhub_service import errors
from adamhub_service.model.log import LogEntry
from adamhub_service.model.outcomes import AppendOutcome, IdempotencyClaim, WriteStatus
from adamhub_service.model.quantized import LoggedGradient, logged_dtype
from adamhub_service.model.records import SessionRecord, new_write_id, utc_now
from adamhub_service.model.repositories import SessionRepository
from adamhub_service.model.stored import CachedSession, LoggedStep
from adamhub_service.observability.history import step_point
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import AdamConfig, AdamState, FloatArray


@dataclass(frozen=True, slots=True)
class Report:
    """What a worker tells of its step, for the history: its loss, and who it is."""

    loss: float | None = None
    worker: str | None = None


@dataclass(slots=True)
class Commit:
    """Steps after ``current``, in order, to log together."""

    current: CachedSession
    state: AdamState = field(init=False)
    config: AdamConfig = field(init=False)
    steps: list[LoggedStep] = field(default_factory=list)
    states: list[AdamState] = field(default_factory=list)
    new: SessionRecord | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.state = self.current.state
        self.config = self.current.config

    def add(
        self,
        new_state: AdamState,
        config: AdamConfig,
        gradient: FloatArray,
        logged: LoggedGradient,
        *,
        report: Report = Report(),
        staleness: int | None = None,
        claim: IdempotencyClaim | None = None,
        segments: tuple[int, ...] | None = None,
    ) -> None:
        """Add the step that took the state so far to ``new_state`` with ``gradient``
        (``logged`` as the log keeps it; of ``segments`` only, for a partial step) under
        ``config``."""
        entry = LogEntry(
            new_write_id(),
            logged_dtype(logged),
            logged.nbytes,
            None if config == self.config else config,
            segments,
        )
        point = None
        if self.current.record.settings.history_points:
            point = step_point(
                t=new_state.step,
                config=config,
                gradient=gradient,
                before=self.state.params,
                after=new_state.params,
                loss=report.loss,
                staleness=staleness,
                worker=report.worker,
            ).encode()
        self.steps.append(LoggedStep(entry, logged, claim, point))
        self.states.append(new_state)
        self.state, self.config = new_state, config

    def record(self) -> SessionRecord:
        """The record after the steps (before its new rev)."""
        return self.current.record.evolve(
            t=self.state.step,
            head=self.steps[-1].entry.write_id,
            updated_at=utc_now(),
            optimizer=self.config,
        )

    async def run(
        self,
        store: SessionRepository,
        metrics: Metrics,
        *,
        idempotency_ttl_ms: int,
        round_entries: Sequence[str] | None = None,
    ) -> AppendOutcome:
        """Log the steps if the session is still at the cached version: ``COMMITTED``,
        ``REPLAYED`` (a step's key was recorded before) or ``CONFLICT`` (another writer
        won: compute again); 404 when the session is gone."""
        new = self.new = self.record()
        with metrics.step_phases.labels("commit").time():
            outcome = await store.append(
                self.current,
                new,
                self.steps,
                CachedSession(new, self.state, self.config),
                idempotency_ttl_ms=idempotency_ttl_ms,
                round_entries=round_entries,
            )
        if outcome.status is WriteStatus.COMMITTED:
            metrics.steps.labels("applied").inc(len(self.steps))
        elif outcome.status is WriteStatus.GONE:
            raise errors.SessionNotFound(new.id)
        elif outcome.status is not WriteStatus.REPLAYED:
            metrics.conflicts.inc()
        return outcome

    def answered(self, index: int, rev: int) -> tuple[SessionRecord, AdamState]:
        """The record and state the step at ``index`` left, once committed at ``rev``."""
        assert self.new is not None, "answered after run"
        state = self.states[index]
        record = self.new.evolve(rev=rev, t=state.step, head=self.steps[index].entry.write_id)
        return record, state
