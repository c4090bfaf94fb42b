"""Applying a gradient to a session: exactly once, atomically, in order.

Within a process, steps of one session queue on a lock and usually find the state in
the cache; across processes, the store's compare-and-set on ``rev`` decides, and the
loser re-reads and recomputes. An ``Idempotency-Key`` is recorded by the same commit
that applies the step, so a retried request can never be applied twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import numpy as np

from adamhub_service import errors, optim
from adamhub_service.locks import KeyedLocks
from adamhub_service.metrics import Metrics
from adamhub_service.optim import AdamConfig, AdamState, FloatArray
from adamhub_service.records import SessionRecord, new_write_id, utc_now
from adamhub_service.sessions import SessionService, attempts

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


def gradient_digest(gradient: FloatArray) -> str:
    """A fingerprint of a gradient's values in the session dtype."""
    data = np.ascontiguousarray(gradient).data.cast("B")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class StepService:
    """Steps as the routes see them."""

    def __init__(self, sessions: SessionService, metrics: Metrics | None = None) -> None:
        self._sessions = sessions
        self._locks = KeyedLocks()
        self._metrics = metrics or Metrics()

    async def step(
        self, session_id: str, gradient: FloatArray, *, idempotency_key: str | None = None
    ) -> StepResult:
        """Apply ``gradient`` (already validated: the session's size, dtype, finite)."""
        settings = self._sessions.settings
        digest = gradient_digest(gradient) if idempotency_key is not None else ""
        async with self._locks.hold(session_id):
            async for _ in attempts(settings.commit_attempts):
                current = await self._sessions.load(session_id)
                try:
                    state = await _compute(current.state, gradient, current.record.optimizer)
                except optim.NonFiniteUpdate as exc:
                    if idempotency_key is not None:
                        record = await self._sessions.store.read_idempotency(
                            session_id, idempotency_key
                        )
                        if record is not None:
                            return await self._replay(session_id, record, digest)
                    raise errors.NonFiniteUpdate(
                        f"this gradient would make element {exc.index} of {exc.vector} "
                        "non-finite; nothing was applied",
                        vector=exc.vector,
                        index=exc.index,
                    ) from exc
                new = current.record.evolve(t=state.step, head=new_write_id(), updated_at=utc_now())
                idempotency = (
                    None
                    if idempotency_key is None
                    else (
                        idempotency_key,
                        f"{digest}:{state.step}",
                        int(settings.idempotency_ttl_seconds * 1000),
                    )
                )
                outcome = await self._sessions.commit_version(
                    current.record, new, state, idempotency=idempotency
                )
                if outcome.committed_rev is not None:
                    self._metrics.steps.labels("applied").inc()
                    committed = new.evolve(rev=outcome.committed_rev)
                    return StepResult(committed, state.params, state.step, replayed=False)
                if outcome.replay_record is not None:
                    return await self._replay(session_id, outcome.replay_record, digest)
                if outcome.gone:
                    raise errors.SessionNotFound(session_id)
                self._metrics.conflicts.inc()
        raise AssertionError("unreachable: attempts() raises when exhausted")

    async def _replay(self, session_id: str, record: str, digest: str) -> StepResult:
        recorded_digest, applied_t = record.rsplit(":", 1)
        if recorded_digest != digest:
            raise errors.IdempotencyKeyReused(
                "this Idempotency-Key was already used with a different gradient",
                applied_t=int(applied_t),
            )
        current, params = await self._sessions.params(session_id)
        assert params is not None
        self._metrics.steps.labels("replayed").inc()
        return StepResult(current, params, int(applied_t), replayed=True)


async def _compute(state: AdamState, gradient: FloatArray, config: AdamConfig) -> AdamState:
    if state.size >= THREAD_THRESHOLD:
        return await asyncio.to_thread(optim.adam_step, state, gradient, config)
    return optim.adam_step(state, gradient, config)
