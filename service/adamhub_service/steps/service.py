"""Applying a gradient to a session: exactly once, atomically, in order.

Within a process, steps of one session queue on a lock and usually find the state in
the cache; across processes, the store's compare-and-set on ``rev`` decides, and the
loser re-reads and recomputes. An ``Idempotency-Key`` is recorded by the same commit
that applies the step, so a retried request can never be applied twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from adamhub_service import errors, optim
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import AdamConfig, AdamState, FloatArray
from adamhub_service.sessions.records import SessionRecord, new_write_id, utc_now
from adamhub_service.steps.idempotency import gradient_digest
from adamhub_service.steps.locks import KeyedLocks
from adamhub_service.storage.outcomes import IdempotencyClaim, IdempotencyRecord, WriteStatus
from adamhub_service.storage.versions import SessionStore

# Above this many elements the arithmetic runs in a worker thread (numpy releases the
# GIL), so that one large session does not stall every other request of the process.
THREAD_THRESHOLD = 1 << 16


@dataclass(frozen=True, slots=True)
class StepResult:
    """The outcome of a step request."""

    record: SessionRecord
    params: FloatArray
    applied_t: int
    replayed: bool


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
        self._locks = KeyedLocks()
        # When the store failed a step of a session: the steps queued behind it then
        # fail at once instead of each waiting out its own store timeout.
        self._store_failed_at: dict[str, float] = {}

    async def step(
        self, session_id: str, gradient: FloatArray, *, idempotency_key: str | None = None
    ) -> StepResult:
        """Apply ``gradient`` (already validated: the session's size, dtype, finite)."""
        digest = gradient_digest(gradient) if idempotency_key is not None else ""

        async def attempt() -> StepResult | None:
            current = await self._store.load(session_id)
            try:
                state = await _compute(current.state, gradient, current.record.optimizer)
            except errors.NonFiniteUpdate:
                # A retry of a step that was applied can no longer be applied: answer it.
                if idempotency_key is not None:
                    recorded = await self._store.read_idempotency(session_id, idempotency_key)
                    if recorded is not None:
                        return await self._replay(session_id, recorded, digest)
                raise
            new = current.record.evolve(t=state.step, head=new_write_id(), updated_at=utc_now())
            claim = (
                None
                if idempotency_key is None
                else IdempotencyClaim(
                    idempotency_key, IdempotencyRecord(digest, state.step), self._idempotency_ttl_ms
                )
            )
            outcome = await self._store.commit_state(current.record, new, state, idempotency=claim)
            if outcome.status is WriteStatus.COMMITTED:
                self._metrics.steps.labels("applied").inc()
                return StepResult(new.evolve(rev=outcome.rev), state.params, state.step, False)
            if outcome.replay is not None:
                return await self._replay(session_id, outcome.replay, digest)
            if outcome.status is WriteStatus.GONE:
                raise errors.SessionNotFound(session_id)
            self._metrics.conflicts.inc()
            return None

        arrived = time.monotonic()
        async with self._locks.hold(session_id):
            if self._store_failed_at.get(session_id, 0.0) > arrived:
                raise errors.StoreUnavailable(
                    "the store did not answer the step queued before this one; nothing was applied"
                )
            try:
                result = await self._store.until_committed(attempt)
            except (errors.StoreUnavailable, errors.OutcomeUnknown):
                if len(self._store_failed_at) > 10_000:
                    self._store_failed_at.clear()
                self._store_failed_at[session_id] = time.monotonic()
                raise
            self._store_failed_at.pop(session_id, None)
            return result

    async def _replay(
        self, session_id: str, recorded: IdempotencyRecord, digest: str
    ) -> StepResult:
        if recorded.digest != digest:
            raise errors.IdempotencyKeyReused(
                "this Idempotency-Key was already used with a different gradient",
                applied_t=recorded.applied_t,
            )
        current, params = await self._store.params(session_id)
        assert params is not None, "params are read unless an ETag matched"
        self._metrics.steps.labels("replayed").inc()
        return StepResult(current, params, recorded.applied_t, replayed=True)


async def _compute(state: AdamState, gradient: FloatArray, config: AdamConfig) -> AdamState:
    if state.size >= THREAD_THRESHOLD:
        return await asyncio.to_thread(optim.adam_step, state, gradient, config)
    return optim.adam_step(state, gradient, config)
