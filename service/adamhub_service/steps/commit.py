"""The one commit path of every step: a plain group of steps and a round's close.

Steps computed from one cached state are added to a ``Commit`` in order; it makes each
step's log entry (with its config when that changed) and history point, the new record,
and logs them all with one compare-and-set (``SessionRepository.append``). A large
gradient, alone in its commit, is *staged*: its bytes start for the store before its
step is computed, so that the commit's round trip carries only the script.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ParamSpec, TypeVar

from adamhub_service import errors
from adamhub_service.model.log import LogEntry
from adamhub_service.model.outcomes import AppendOutcome, IdempotencyClaim, WriteStatus
from adamhub_service.model.quantized import LoggedGradient, logged_dtype
from adamhub_service.model.records import SessionRecord, new_write_id, utc_now
from adamhub_service.model.repositories import SessionRepository, StagedWrite
from adamhub_service.model.stored import CachedSession, LoggedStep
from adamhub_service.observability.history import step_point
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import AdamConfig, AdamState, FloatArray

# Above this many elements arithmetic runs in a worker thread (the kernels release the
# GIL), so that one large session does not stall every other request of the process.
THREAD_THRESHOLD = 1 << 16
# A logged gradient of at least this many bytes is staged (above): its write to the
# store overlaps the step's arithmetic. Measured on 2 cores, float32 steps interleaved
# with unstaged ones: 1M 7.9 → 7.6 ms, 2M 14.6 → 13.7, 10M 106.7 → 88.8.
STAGE_BYTES = 1 << 20
# While a staged write at least this large is on its way, the step's history point (two
# norms over the vectors) is computed in a worker thread, so that the event loop keeps
# the chunks moving: a 10M float32 step 95.0 → 88.8 ms. Below, the thread costs more
# than it frees (5M: 37.3 ms in a thread against 34.6; 2M: 15.8 against 13.7).
HISTORY_THREAD_BYTES = 32 << 20

_P = ParamSpec("_P")
_R = TypeVar("_R")


async def off_the_loop(
    elements: int, function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
) -> _R:
    """``function(*args, **kwargs)``: in a worker thread when it works on more than
    ``THREAD_THRESHOLD`` elements."""
    if elements >= THREAD_THRESHOLD:
        return await asyncio.to_thread(function, *args, **kwargs)
    return function(*args, **kwargs)


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
    # The first step's log entry and its write on the way (``stage``), until ``run``
    # (or ``release``) takes it.
    _staged: tuple[LogEntry, LoggedGradient, StagedWrite] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.state = self.current.state
        self.config = self.current.config

    def stage(
        self,
        store: SessionRepository,
        config: AdamConfig,
        logged: LoggedGradient,
        segments: tuple[int, ...] | None = None,
    ) -> None:
        """Start writing the gradient of the step about to be computed, the commit's
        only one, when it is large. ``release`` deletes it unless ``run`` took it."""
        if self.steps or self._staged is not None or logged.nbytes < STAGE_BYTES:
            return
        entry = self._entry(config, logged, segments)
        write = store.stage_log(self.current.record, LoggedStep(entry, logged))
        self._staged = (entry, logged, write)

    async def release(self) -> None:
        """Delete a staged gradient that no ``run`` took (the step was refused, or an
        error came first)."""
        if self._staged is not None:
            _, _, write = self._staged
            self._staged = None
            await write.abandon()

    def _entry(
        self, config: AdamConfig, logged: LoggedGradient, segments: tuple[int, ...] | None
    ) -> LogEntry:
        return LogEntry(
            new_write_id(),
            logged_dtype(logged),
            logged.nbytes,
            None if config == self.config else config,
            segments,
        )

    async def add(
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
        ``config``; its history point is computed in a worker thread when large."""
        entry = self._entry(config, logged, segments)
        if self._staged is not None and not self.steps:
            staged_entry, staged_gradient, _ = self._staged
            same = replace(entry, write_id=staged_entry.write_id) == staged_entry
            if same and staged_gradient is logged:
                entry = staged_entry  # its gradient is on the way already
        point = None
        if self.current.record.settings.history_points:
            large = self._staged is not None and logged.nbytes >= HISTORY_THREAD_BYTES
            point = await off_the_loop(
                gradient.size if large else 0,
                step_point,
                t=new_state.step,
                config=config,
                gradient=gradient,
                before=self.state.params,
                after=new_state.params,
                loss=report.loss,
                staleness=staleness,
                worker=report.worker,
            )
        encoded = None if point is None else point.encode()
        self.steps.append(LoggedStep(entry, logged, claim, encoded))
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
        staged = None
        if self._staged is not None:
            entry, _, write = self._staged
            if len(self.steps) == 1 and self.steps[0].entry is entry:
                # The append deletes it unless it commits.
                self._staged, staged = None, write
            else:
                await self.release()
        with metrics.step_phases.labels("commit").time():
            outcome = await store.append(
                self.current,
                new,
                self.steps,
                CachedSession(new, self.state, self.config),
                idempotency_ttl_ms=idempotency_ttl_ms,
                round_entries=round_entries,
                staged=staged,
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
