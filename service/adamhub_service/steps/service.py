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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from adamhub_service import errors
from adamhub_service.model.outcomes import IdempotencyClaim, IdempotencyRecord, WriteStatus
from adamhub_service.model.principal import Principal
from adamhub_service.model.quantized import Int8Blocks, LoggedGradient
from adamhub_service.model.records import SessionRecord
from adamhub_service.model.repositories import SessionRepository
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import AdamState, FloatArray
from adamhub_service.sessions.budget import InflightBudget, vector_request_bytes
from adamhub_service.steps.commit import Commit, Report
from adamhub_service.steps.idempotency import gradient_digest
from adamhub_service.steps.rounds import RoundService
from adamhub_service.steps.screening import Screening
from adamhub_service.steps.staleness import staleness
from adamhub_service.steps.values import (
    RoundPending,
    StepRequest,
    StepResult,
    StepSettings,
    compute_step,
)

# At most this many steps, and this many gradient bytes, go in one commit.
MAX_GROUP_STEPS = 64
MAX_GROUP_BYTES = 64 << 20

# Reads a step's gradient of ``size`` elements for the session of ``record``: as it
# arrived (its wire dtype), and in the session's dtype (validated: that size, finite).
GradientReader = Callable[
    [SessionRecord, int], Awaitable[tuple[FloatArray | Int8Blocks, FloatArray]]
]


@dataclass(slots=True)
class _Queued:
    """A step waiting for its group: the gradient in the session dtype, the same
    gradient as it is logged (the wire dtype, when narrower), and its answer."""

    gradient: FloatArray
    logged: LoggedGradient
    idempotency_key: str | None
    digest: str
    settings: StepSettings | None
    base_step: int | None
    report: Report
    segments: tuple[int, ...] | None = None
    answer: asyncio.Future[StepResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class StepService:
    """Steps as the API sees them."""

    def __init__(
        self,
        store: SessionRepository,
        metrics: Metrics,
        *,
        idempotency_ttl_seconds: float,
        budget: InflightBudget | None = None,
        rounds: RoundService | None = None,
        screening: Screening | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._screening = screening
        self._budget = budget or InflightBudget(1 << 62, wait_seconds=0)
        self._rounds = rounds
        self._idempotency_ttl_ms = int(idempotency_ttl_seconds * 1000)
        self._queues: dict[str, deque[_Queued]] = {}
        self._drains: dict[str, asyncio.Task[None]] = {}

    async def submit(
        self,
        principal: Principal,
        session_id: str,
        request: StepRequest,
        read_gradient: GradientReader,
    ) -> StepResult | RoundPending:
        """The step use case: a gradient for the session, from a caller who may step it.

        Checks access and the settings the step carries before its body is read (with
        ``read_gradient``, within this process's memory budget); then applies it, or
        contributes it to the open round and waits for the round (``RoundPending`` when
        it stays open past the request's wait).
        """
        record = await self._store.record(session_id, fresh=False)
        principal.authorize(record, "steps.create")
        if request.settings is not None:
            request.settings.applied_to(record.optimizer)  # 422 before the body is read
        itemsize = np.dtype(record.dtype).itemsize
        vectors = 4 if record.optimizer.amsgrad else 3
        nbytes = vector_request_bytes(
            record.size, request.wire_itemsize or itemsize, itemsize, vectors
        )
        size = carried_size(record, request.segments)
        admitted = None
        if self._screening is not None and request.report.worker is not None:
            admitted = await self._screening.admit(record, request.report.worker)
        async with self._budget.hold(nbytes):
            with self._metrics.step_phases.labels("read_body").time():
                try:
                    received, gradient = await read_gradient(record, size)
                except errors.WrongSize as exc:
                    if request.segments is None and (grown := grown_since(record, exc)):
                        raise grown from None
                    raise
                except errors.NonFiniteValue:
                    if admitted is not None:
                        assert self._screening is not None
                        await self._screening.refuse_non_finite(record, admitted)
                    raise
            recording = None
            if admitted is not None:
                assert self._screening is not None
                norm = await self._screening.judge(record, admitted, gradient)
                recording = self._screening.accept(record, admitted, norm)
            try:
                # The log keeps a narrower wire dtype as it came (it widens exactly), and
                # 8-bit blocks as they came (a plain step's; a round logs its mean).
                logged = logged_form(received, gradient)
                if record.settings.rounds is None:
                    return await self.step(
                        session_id,
                        gradient,
                        logged=logged,
                        idempotency_key=request.idempotency_key,
                        settings=request.settings,
                        base_step=request.base_step,
                        report=request.report,
                        segments=request.segments,
                    )
                assert self._rounds is not None, "rounds sessions need the round service"
                if isinstance(logged, Int8Blocks):
                    # A round logs its mean, so a contribution is kept as it applies:
                    # the float32 values the blocks stand for (``gradient``, widened).
                    logged = None if gradient.dtype == np.float32 else gradient.astype(np.float32)
                contributed = await self._rounds.contribute(
                    record, gradient, logged=logged, request=request
                )
            finally:
                if recording is not None:
                    await recording
        # The wait holds no memory: the gradient is stored.
        return await self._rounds.answer(contributed, request.wait_seconds)

    async def wait_for_step(
        self, principal: Principal, session_id: str, min_step: int, seconds: float
    ) -> None:
        """Wait until the session's t reaches ``min_step`` or ``seconds`` pass (a
        long-poll); in a rounds session, closing the rounds that come due meanwhile."""
        record = await self._store.record(session_id, fresh=False)
        principal.authorize(record, "params.read")
        if self._rounds is not None:
            await self._rounds.wait_for_step(session_id, min_step, seconds)

    async def step(
        self,
        session_id: str,
        gradient: FloatArray,
        *,
        logged: LoggedGradient | None = None,
        idempotency_key: str | None = None,
        settings: StepSettings | None = None,
        base_step: int | None = None,
        report: Report | None = None,
        segments: tuple[int, ...] | None = None,
    ) -> StepResult:
        """Apply ``gradient`` (already validated: the session's size, dtype, finite).

        ``logged`` is the gradient as it arrived, when that is narrower than the session
        dtype or 8-bit blocks (it converts to ``gradient`` exactly); the log keeps it
        instead.
        ``settings`` change the hyperparameters from this step on, in the same commit.
        ``base_step`` is the t of the parameters the gradient was computed at: one the
        session is past by more than its ``max_staleness``, or has never reached, is
        refused (409 ``stale-gradient``). ``report`` goes in the step's history point.
        ``segments``: a partial step, the gradients of those segments only.
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
            segments,
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
        commit = Commit(current)
        try:
            return await self._apply(session_id, group, commit)
        finally:
            await commit.release()

    async def _apply(self, session_id: str, group: list[_Queued], commit: Commit) -> bool | None:
        """``_attempt``'s work on the group, in ``commit``."""
        record = commit.current.record
        optimizer = record.optimizer
        applied: list[_Queued] = []
        for queued in group:
            t = commit.state.step
            resized = _resized(record, queued)
            if resized is not None:
                # The session grew (param groups added) after this gradient was read.
                queued.answer.set_exception(resized)
                continue
            stale = staleness(queued.base_step, t, record.settings.max_staleness)
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
            if len(group) == 1:
                commit.stage(self._store, step_optimizer, queued.logged, queued.segments)
            try:
                with self._metrics.step_phases.labels("math").time():
                    new_state = await compute_step(
                        commit.state, queued.gradient, step_optimizer, queued.segments
                    )
            except errors.NonFiniteUpdate as exc:
                # A retry of a step that was applied can no longer be applied: answer it.
                await self._refuse_unless_applied(session_id, queued, exc)
                continue
            await commit.add(
                new_state,
                step_optimizer,
                queued.gradient,
                queued.logged,
                report=queued.report,
                staleness=None if queued.base_step is None else t - queued.base_step,
                claim=self._claim(queued, new_state),
                segments=queued.segments,
            )
            optimizer = step_optimizer
            applied.append(queued)
        if not applied:
            return True
        outcome = await commit.run(
            self._store, self._metrics, idempotency_ttl_ms=self._idempotency_ttl_ms
        )
        if outcome.status is WriteStatus.COMMITTED:
            assert outcome.rev is not None
            for index, queued in enumerate(applied):
                answered, stepped = commit.answered(index, outcome.rev)
                queued.answer.set_result(StepResult(answered, stepped.params, stepped.step, False))
            return True
        if outcome.replay is not None and outcome.replay_index is not None:
            # That step was applied before: answer it; the others are applied again.
            await self._answer_replay(session_id, applied[outcome.replay_index], outcome.replay)
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


def _fail(group: list[_Queued], exc: BaseException) -> None:
    for queued in group:
        if not queued.answer.done():
            queued.answer.set_exception(exc)


def _resized(record: SessionRecord, queued: _Queued) -> errors.AdamhubError | None:
    """Why a gradient read at the session's earlier size cannot be applied, if it was."""
    expected = carried_size(record, queued.segments)
    if queued.gradient.size == expected:
        return None
    wrong = errors.WrongSize(
        f"'gradient' has {queued.gradient.size} elements; the session has {expected} now",
        field="gradient",
        expected_size=expected,
        actual_size=int(queued.gradient.size),
    )
    return grown_since(record, wrong) or wrong


def carried_size(record: SessionRecord, segments: tuple[int, ...] | None) -> int:
    """How many numbers a step carrying ``segments`` (None: all) holds; 422 when the
    session has no such segments."""
    if segments is None:
        return record.size
    ranges = record.optimizer.tensor_ranges(record.size)
    if not record.optimizer.segment_sizes:
        raise errors.ValidationFailed(
            "this session was made without segments, so a step carries every parameter",
            errors=[{"loc": ["segments"], "msg": "the session has no segments"}],
        )
    if segments[-1] >= len(ranges):
        raise errors.ValidationFailed(
            f"the session has {len(ranges)} segments (0 to {len(ranges) - 1}); the step "
            f"names segment {segments[-1]}",
            errors=[{"loc": ["segments"], "msg": f"at most {len(ranges) - 1}"}],
        )
    return sum(ranges[i][1] - ranges[i][0] for i in segments)


def grown_since(record: SessionRecord, wrong: errors.WrongSize) -> errors.SizeChanged | None:
    """409 ``size-changed`` for a whole gradient of the session's size before param
    groups were added to it (the size of its first segments), else None."""
    sizes = record.optimizer.segment_sizes
    actual = wrong.extra.get("actual_size")
    if actual not in record.grown_from:
        return None
    return errors.SizeChanged(
        f"this gradient has {actual} elements: the session's size before param groups were "
        f"added to it; it has {record.size} now, in {len(sizes)} segments. Add the same "
        "param groups on this worker (or attach again) and compute the gradient again",
        size=record.size,
        segments=list(sizes),
    )


def logged_form(received: FloatArray | Int8Blocks, gradient: FloatArray) -> LoggedGradient | None:
    """What the log keeps of a gradient that arrived as ``received``: 8-bit blocks as
    they came, a narrower dtype as it came (both widen exactly to ``gradient``), else
    nothing but ``gradient`` itself (None)."""
    if isinstance(received, Int8Blocks):
        return received
    return received if received.dtype.itemsize < gradient.dtype.itemsize else None
