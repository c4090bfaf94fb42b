"""The version protocol: sessions read through this process's cache, written by
compare-and-set on ``rev``, retried when another writer wins.

The cache holds the newest state this process has seen of each session; it is only a
hint, because every write is fenced by the store. A write that loses re-reads and tries
again, up to ``commit_attempts`` times (``until_committed``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from adamhub_service import errors
from adamhub_service.optim import AdamState, FloatArray
from adamhub_service.sessions.records import SessionRecord, is_session_id
from adamhub_service.storage.cache import CachedSession, StateCache
from adamhub_service.storage.encoding import (
    PARAMS,
    record_changes,
    state_of,
    stored_fields,
    vectors_of,
)
from adamhub_service.storage.outcomes import (
    IdempotencyClaim,
    IdempotencyRecord,
    WriteOutcome,
    WriteStatus,
)
from adamhub_service.storage.store import QuotaRefusal, RateDecision, RedisStore, version_keys

_BACKOFF_BASE_SECONDS = 0.002
_BACKOFF_CAP_SECONDS = 0.05

T = TypeVar("T")


class SessionStore:
    """Sessions' records and states: the store behind this process's cache."""

    def __init__(self, store: RedisStore, cache: StateCache, *, commit_attempts: int) -> None:
        self._store = store
        self._cache = cache
        self._commit_attempts = commit_attempts

    @property
    def cached_bytes(self) -> int:
        """Bytes of state held by the cache."""
        return self._cache.nbytes

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""
        await self._store.ping()

    async def until_committed(self, attempt: Callable[[], Awaitable[T | None]]) -> T:
        """Run ``attempt`` until it returns a result; None means it lost a race.

        Backs off with full jitter between attempts; when every attempt is used,
        raises ``StepConflict`` (409 with Retry-After).
        """
        for number in range(self._commit_attempts):
            if number:
                ceiling = min(_BACKOFF_CAP_SECONDS, _BACKOFF_BASE_SECONDS * 2**number)
                await asyncio.sleep(random.uniform(0, ceiling))
            result = await attempt()
            if result is not None:
                return result
        raise errors.StepConflict(
            f"the session kept changing under {self._commit_attempts} attempts; try again",
            retry_after=1,
        )

    async def create(self, record: SessionRecord, state: AdamState) -> WriteStatus:
        """Store a new session (COMMITTED, and cached) unless its id is taken (ID_TAKEN)."""
        status = await self._store.create(record, vectors_of(state))
        if status is WriteStatus.COMMITTED:
            self._cache.put(CachedSession(record, state))
        return status

    async def record(self, session_id: str, *, fresh: bool = True) -> SessionRecord:
        """The session's record: from the store, or from the cache when not ``fresh``.

        A cached record may be behind on ``t`` and settings but never on ``size`` or
        ``dtype``, which do not change.
        """
        if not is_session_id(session_id):
            raise errors.SessionNotFound(session_id)
        if not fresh and (entry := self._cache.get(session_id)) is not None:
            return entry.record
        record = await self._store.read_record(session_id)
        if record is None:
            self._cache.drop(session_id)
            raise errors.SessionNotFound(session_id)
        return record

    async def records(
        self, tenant: str, *, after: str | None, limit: int
    ) -> tuple[list[SessionRecord], str | None]:
        """Up to ``limit`` of the tenant's records in creation order after ``after``, and
        the last id read when more may follow."""
        ids = await self._store.list_ids(tenant, after=after, limit=limit)
        records = [r for r in await self._store.read_records(ids) if r is not None]
        return records, (ids[-1] if ids and len(ids) == limit else None)

    async def load(self, session_id: str) -> CachedSession:
        """The session's state: the cached one (unverified), else the stored one."""
        entry = self._cache.get(session_id)
        if entry is not None:
            return entry

        async def attempt() -> CachedSession | None:
            record = await self.record(session_id)
            vectors = await self._store.read_vectors(record, stored_fields(record))
            if vectors is None:
                return None
            loaded = CachedSession(record, state_of(vectors, record.t))
            self._cache.put(loaded)
            return loaded

        return await self.until_committed(attempt)

    async def params(
        self, session_id: str, *, unless_heads: frozenset[str] = frozenset()
    ) -> tuple[SessionRecord, FloatArray | None]:
        """The current record and parameters, verified against the store.

        The parameters are None, and not read, when the head is one of ``unless_heads``
        (``"*"`` matches any).
        """

        async def attempt() -> tuple[SessionRecord, FloatArray | None] | None:
            record = await self.record(session_id)
            if record.head in unless_heads or "*" in unless_heads:
                return record, None
            entry = self._cache.get(session_id)
            if entry is not None and entry.record.rev == record.rev:
                return record, entry.state.params
            vectors = await self._store.read_vectors(record, (PARAMS,))
            return None if vectors is None else (record, vectors[PARAMS])

        return await self.until_committed(attempt)

    async def read_idempotency(self, session_id: str, key: str) -> IdempotencyRecord | None:
        """What ``key`` produced on this session, if it is recorded."""
        return await self._store.read_idempotency(session_id, key)

    async def commit_state(
        self,
        current: SessionRecord,
        new: SessionRecord,
        state: AdamState,
        *,
        idempotency: IdempotencyClaim | None = None,
    ) -> WriteOutcome:
        """Write ``state`` as version ``new.head`` and make it current if nothing moved.

        On success the cache holds the new version; otherwise the store has deleted
        the written chunks, and the cache forgets the session unless the commit was
        refused as an idempotent replay (which leaves the current version as it was).
        """
        outcome = await self._store.commit(
            new,
            expected_rev=current.rev,
            vectors=vectors_of(state),
            old_keys=version_keys(current),
            changes=record_changes(t=new.t, head=new.head, updated_at=new.updated_at),
            idempotency=idempotency,
        )
        if outcome.status is WriteStatus.COMMITTED:
            self._cache.put(CachedSession(new.evolve(rev=outcome.rev), state))
        elif outcome.status is not WriteStatus.REPLAYED:
            self._cache.drop(current.id)
        return outcome

    async def commit_record(self, current: SessionRecord, new: SessionRecord) -> WriteOutcome:
        """Change the record's settings (not its vectors) if nothing moved."""
        changes = {
            name: getattr(new, name)
            for name in ("optimizer", "name", "metadata", "updated_at")
            if getattr(new, name) != getattr(current, name)
        }
        outcome = await self._store.commit(
            new, expected_rev=current.rev, changes=record_changes(**changes)
        )
        entry = self._cache.get(current.id)
        if (
            outcome.status is WriteStatus.COMMITTED
            and entry is not None
            and entry.record.rev == current.rev
        ):
            self._cache.put(CachedSession(new.evolve(rev=outcome.rev), entry.state))
        else:
            self._cache.drop(current.id)
        return outcome

    async def reserve(
        self, record: SessionRecord, *, max_sessions: int, max_parameters: int
    ) -> QuotaRefusal | None:
        """Index a new session in its tenant's quota (see ``RedisStore.reserve``)."""
        return await self._store.reserve(
            record, max_sessions=max_sessions, max_parameters=max_parameters
        )

    async def release(self, record: SessionRecord) -> None:
        """Undo ``reserve`` for a session that was not created."""
        await self._store.release(record.tenant, record.id)

    async def claim_create(self, tenant: str, key: str, value: str, ttl_ms: int) -> str:
        """Record a create's Idempotency-Key unless recorded; return what is recorded."""
        return await self._store.claim_create(tenant, key, value, ttl_ms)

    async def take_token(self, key_id: str, *, rate: float, burst: int) -> RateDecision:
        """Take a request token of ``key_id``'s rate limit."""
        return await self._store.take_token(key_id, rate=rate, burst=burst)

    async def delete(self, current: SessionRecord) -> WriteStatus:
        """Delete the session if it is still at ``current.rev``."""
        status = await self._store.delete(current)
        if status is not WriteStatus.CONFLICT:
            self._cache.drop(current.id)
        return status
