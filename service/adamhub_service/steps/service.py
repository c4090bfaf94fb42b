"""Applying gradients to a session: exactly once, atomically, in order, in groups.

Within a process, steps of one session queue up; one task drains the queue, applying
the queued steps in order to the cached state and logging them with **one** commit
(group commit), then answers each. Across processes, the store's compare-and-set on
``rev`` decides, and the loser re-reads and recomputes. An ``Idempotency-Key`` is
recorded by the same commit that applies its step, so a retried request can never be
applied twice.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from adamhub_service import errors, optim
from adamhub_service.observability.history import step_point
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import AdamConfig, AdamState, FloatArray, with_changes
from adamhub_service.sessions.records import SessionRecord, new_write_id, utc_now
from adamhub_service.steps.idempotency import gradient_digest
from adamhub_service.storage.cache import CachedSession
from adamhub_service.storage.log import LogEntry
from adamhub_service.storage.outcomes import IdempotencyClaim, IdempotencyRecord, WriteStatus
from adamhub_service.storage.store import LoggedStep
from adamhub_service.storage.versions import SessionStore

# Above this many elements the arithmetic runs in a worker thread (the kernel releases
# the GIL), so that one large session does not stall every other request of the process.
THREAD_THRESHOLD = 1 << 16
# The request header of a step's settings (documented with the route).
SETTINGS_HEADER = "Adamhub-Optimizer"
# At most this many steps, and this many gradient bytes, go in one commit.
MAX_GROUP_STEPS = 64
MAX_GROUP_BYTES = 64 << 20


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
                str(exc), errors=[{"loc": ["header", SETTINGS_HEADER], "msg": str(exc)}]
            ) from exc


@dataclass(frozen=True, slots=True)
class Report:
    """What a worker tells of its step, for the history: its loss, and who it is."""

    loss: float | None = None
    worker: str | None = None


@dataclass(slots=True)
class _Queued:
    """A step waiting for its group: the gradient in the session dtype, the same
    gradient as it is logged (the wire dtype, when narrower), and its answer."""

    gradient: FloatArray
    logged: FloatArray
    idempotency_key: str | None
    digest: str
    settings: StepSettings | None
    base_step: int | None
    report: Report
    answer: asyncio.Future[StepResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class StepService:
    """Steps as the API sees them."""

    def __init__(
        self,
        store: SessionStore,
        metrics: Metrics,
        *,
        idempotency_ttl_seconds: float,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._idempotency_ttl_ms = int(idempotency_ttl_seconds * 1000)
        self._queues: dict[str, deque[_Queued]] = {}
        self._drains: dict[str, asyncio.Task[None]] = {}

    async def step(
        self,
        session_id: str,
        gradient: FloatArray,
        *,
        logged: FloatArray | None = None,
        idempotency_key: str | None = None,
        settings: StepSettings | None = None,
        base_step: int | None = None,
        report: Report | None = None,
    ) -> StepResult:
        """Apply ``gradient`` (already validated: the session's size, dtype, finite).

        ``logged`` is the gradient as it arrived, when that is narrower than the session
        dtype (it converts to ``gradient`` exactly); the log keeps it instead.
        ``settings`` change the hyperparameters from this step on, in the same commit.
        ``base_step`` is the t of the parameters the gradient was computed at: one the
        session is past by more than its ``max_staleness``, or has never reached, is
        refused (409 ``stale-gradient``). ``report`` goes in the step's history point.
        """
        digest = gradient_digest(gradient) if idempotency_key is not None else ""
        queued = _Queued(
            gradient,
            gradient if logged is None else logged,
            idempotency_key,
            digest,
            settings,
            base_step,
            report or Report(),
        )
        self._queues.setdefault(session_id, deque()).append(queued)
        if session_id not in self._drains:
            self._drains[session_id] = asyncio.create_task(self._drain(session_id))
        return await queued.answer

    async def _drain(self, session_id: str) -> None:
        """Apply the session's queued steps, a group at a time, until none is left."""
        queue = self._queues[session_id]
        try:
            while queue:
                group = [queue.popleft()]
                nbytes = group[0].logged.nbytes
                while queue and len(group) < MAX_GROUP_STEPS:
                    nbytes += queue[0].logged.nbytes
                    if nbytes > MAX_GROUP_BYTES:
                        break
                    group.append(queue.popleft())
                await self._apply_group(session_id, group, queue)
        finally:
            del self._drains[session_id]
            if not queue:
                del self._queues[session_id]

    async def _apply_group(
        self, session_id: str, group: list[_Queued], queue: deque[_Queued]
    ) -> None:
        try:
            await self._store.until_committed(lambda: self._attempt(session_id, group))
        except (errors.StoreUnavailable, errors.OutcomeUnknown) as exc:
            _fail(group, exc)
            # The steps queued behind fail at once instead of each waiting out its own
            # store timeout.
            _fail(
                list(queue),
                errors.StoreUnavailable(
                    "the store did not answer the step queued before this one; nothing was applied"
                ),
            )
            queue.clear()
        except Exception as exc:  # each waiting request answers it
            _fail(group, exc)

    async def _attempt(self, session_id: str, group: list[_Queued]) -> bool | None:
        """Apply the group's unanswered steps to the state and commit them together;
        None when another writer won and the group must be applied again."""
        group[:] = [queued for queued in group if not queued.answer.done()]
        if not group:
            return True
        current = await self._store.load(session_id)
        if any(q.base_step is not None and q.base_step > current.state.step for q in group):
            # A cached state is only a hint: another process may have stepped past it, and
            # a base step is judged against the session as it is, not as cached here.
            current = await self._store.state(session_id)
        record = current.record
        state, config = current.state, current.config
        optimizer = record.optimizer
        applied: list[tuple[_Queued, LoggedStep, AdamState]] = []
        for queued in group:
            stale = _staleness(queued.base_step, state.step, record.max_staleness)
            if stale is not None:
                # A retry of a step that was applied is stale by its own step: answer it.
                await self._refuse_unless_applied(session_id, queued, stale)
                if queued.answer.exception() is stale:
                    self._metrics.stale.labels("async").inc()
                continue
            try:
                step_optimizer = (
                    optimizer if queued.settings is None else queued.settings.applied_to(optimizer)
                )
            except errors.ValidationFailed as exc:
                queued.answer.set_exception(exc)
                continue
            try:
                with self._metrics.step_phases.labels("math").time():
                    new_state = await compute_step(state, queued.gradient, step_optimizer)
            except errors.NonFiniteUpdate as exc:
                # A retry of a step that was applied can no longer be applied: answer it.
                await self._refuse_unless_applied(session_id, queued, exc)
                continue
            entry = LogEntry(
                new_write_id(),
                queued.logged.dtype.name,
                queued.logged.nbytes,
                None if step_optimizer == config else step_optimizer,
            )
            point = None
            if record.history_points:
                point = step_point(
                    t=new_state.step,
                    config=step_optimizer,
                    gradient=queued.gradient,
                    before=state.params,
                    after=new_state.params,
                    loss=queued.report.loss,
                    staleness=None if queued.base_step is None else state.step - queued.base_step,
                    worker=queued.report.worker,
                ).encode()
            config = optimizer = step_optimizer
            state = new_state
            step = LoggedStep(entry, queued.logged, self._claim(queued, state), point)
            applied.append((queued, step, state))
        if not applied:
            return True
        new = record.evolve(
            t=state.step,
            head=applied[-1][1].entry.write_id,
            updated_at=utc_now(),
            optimizer=optimizer,
        )
        with self._metrics.step_phases.labels("commit").time():
            outcome = await self._store.append(
                current,
                new,
                [step for _, step, _ in applied],
                CachedSession(new, state, config),
                idempotency_ttl_ms=self._idempotency_ttl_ms,
            )
        if outcome.status is WriteStatus.COMMITTED:
            for queued, step, stepped in applied:
                answered = new.evolve(rev=outcome.rev, t=stepped.step, head=step.entry.write_id)
                queued.answer.set_result(StepResult(answered, stepped.params, stepped.step, False))
            self._metrics.steps.labels("applied").inc(len(applied))
            return True
        if outcome.replay is not None and outcome.replay_index is not None:
            # That step was applied before: answer it; the others are applied again.
            await self._answer_replay(session_id, applied[outcome.replay_index][0], outcome.replay)
            return None
        if outcome.status is WriteStatus.GONE:
            raise errors.SessionNotFound(session_id)
        self._metrics.conflicts.inc()
        return None

    async def _refuse_unless_applied(
        self, session_id: str, queued: _Queued, refusal: errors.AdamhubError
    ) -> None:
        """Answer ``refusal``, unless the step's key is recorded: then it was applied
        before (this is its retry), and the answer is its replay."""
        recorded = None
        if queued.idempotency_key is not None:
            recorded = await self._store.read_idempotency(session_id, queued.idempotency_key)
        if recorded is None:
            queued.answer.set_exception(refusal)
        else:
            await self._answer_replay(session_id, queued, recorded)

    def _claim(self, queued: _Queued, state: AdamState) -> IdempotencyClaim | None:
        if queued.idempotency_key is None:
            return None
        record = IdempotencyRecord(queued.digest, state.step)
        return IdempotencyClaim(queued.idempotency_key, record, self._idempotency_ttl_ms)

    async def _answer_replay(
        self, session_id: str, queued: _Queued, recorded: IdempotencyRecord
    ) -> None:
        if recorded.digest != queued.digest:
            queued.answer.set_exception(
                errors.IdempotencyKeyReused(
                    "this Idempotency-Key was already used with a different gradient",
                    applied_t=recorded.applied_t,
                )
            )
            return
        current, params = await self._store.params(session_id)
        assert params is not None, "params are read unless an ETag matched"
        self._metrics.steps.labels("replayed").inc()
        queued.answer.set_result(StepResult(current, params, recorded.applied_t, replayed=True))


def _staleness(
    base_step: int | None, t: int, max_staleness: int | None
) -> errors.StaleGradient | None:
    """Why a gradient computed at step ``base_step`` may not be applied at ``t``."""
    if base_step is None:
        return None
    if base_step > t:
        return errors.StaleGradient(
            f"the gradient was computed at t={base_step}; the session is at t={t} (rolled "
            "back or reset since?): fetch the parameters and compute it again",
            t=t,
        )
    if max_staleness is not None and t - base_step > max_staleness:
        return errors.StaleGradient(
            f"the gradient was computed at t={base_step}, {t - base_step} steps behind "
            f"t={t}; this session takes at most {max_staleness}: fetch the parameters "
            "and compute it again",
            t=t,
        )
    return None


def _fail(group: list[_Queued], exc: BaseException) -> None:
    for queued in group:
        if not queued.answer.done():
            queued.answer.set_exception(exc)


async def compute_step(state: AdamState, gradient: FloatArray, config: AdamConfig) -> AdamState:
    """One Adam step; in a worker thread for a large state (the kernel releases the GIL)."""
    if state.size >= THREAD_THRESHOLD:
        return await asyncio.to_thread(optim.adam_step, state, gradient, config)
    return optim.adam_step(state, gradient, config)
