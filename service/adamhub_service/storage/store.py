"""Sessions in Redis: the only module that sends session commands to it.

A new version of a session's vectors is written under a fresh write id with a TTL and
made current by ``commit.lua``, which checks the fencing ``rev``; see
docs/architecture.md, "The commit protocol".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import redis.asyncio as redis
from redis.exceptions import NoScriptError, RedisError

from adamhub_service.errors import StoreUnavailable
from adamhub_service.optim import FloatArray
from adamhub_service.sessions.records import SessionRecord
from adamhub_service.storage.encoding import (
    MetaFields,
    chunk_count,
    record_from_hash,
    record_to_hash,
    stored_fields,
    text,
)
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keys import (
    chunk_keys,
    create_idempotency_key,
    idempotency_index_key,
    idempotency_key,
    meta_key,
    rate_key,
    tenant_index_key,
    tenant_sizes_key,
)
from adamhub_service.storage.outcomes import (
    IdempotencyClaim,
    IdempotencyRecord,
    WriteOutcome,
    WriteStatus,
)


def _load_script(name: str) -> str:
    return resources.files("adamhub_service.storage").joinpath("lua", name).read_text()


def _outcome(reply: Sequence[Any]) -> WriteOutcome:
    status = WriteStatus(int(reply[0]))
    if status is WriteStatus.COMMITTED and len(reply) > 1:
        return WriteOutcome(status, rev=int(reply[1]))
    if status is WriteStatus.REPLAYED:
        return WriteOutcome(status, replay=IdempotencyRecord.decode(text(reply[1])))
    return WriteOutcome(status)


def version_keys(record: SessionRecord) -> list[str]:
    """The keys of every chunk of the record's current version."""
    return chunk_keys(record.id, record.head, stored_fields(record), chunk_count(record))


@dataclass(frozen=True, slots=True)
class QuotaRefusal:
    """Which tenant limit a new session would pass, and where the tenant stands."""

    what: str
    current: int


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The token bucket's answer: allowed, tokens left, seconds until the next token."""

    allowed: bool
    remaining: float
    wait_seconds: float


class RedisStore:
    """Sessions in one Redis (or one Redis Cluster slot per session)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        pending_write_ttl_ms: int,
        round_trip_bytes: int = 64 << 20,
    ) -> None:
        self._redis = client
        self._pending_ttl_ms = pending_write_ttl_ms
        self._round_trip_bytes = round_trip_bytes
        self._commit = client.register_script(_load_script("commit.lua"))
        self._delete = client.register_script(_load_script("delete.lua"))
        self._reserve = client.register_script(_load_script("reserve.lua"))
        self._rate = client.register_script(_load_script("rate.lua"))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_seconds: float,
        max_connections: int,
        pending_write_ttl_ms: int,
        round_trip_bytes: int = 64 << 20,
    ) -> RedisStore:
        """A store over a new connection pool to ``url``."""
        client = redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            max_connections=max_connections,
            health_check_interval=30,
        )
        return cls(
            client, pending_write_ttl_ms=pending_write_ttl_ms, round_trip_bytes=round_trip_bytes
        )

    @property
    def client(self) -> redis.Redis:
        """The Redis client (for the other stores of the deployment: keys)."""
        return self._redis

    async def close(self) -> None:
        """Close every connection."""
        await self._redis.aclose()

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""
        async with unavailable_on_error():
            await self._redis.ping()

    async def read_record(self, session_id: str) -> SessionRecord | None:
        """The session's record, or None when there is no such session."""
        async with unavailable_on_error():
            raw = await self._redis.hgetall(meta_key(session_id))
        return record_from_hash(raw) if raw else None

    async def read_records(self, session_ids: Sequence[str]) -> list[SessionRecord | None]:
        """The records of several sessions (None for those that are gone)."""
        async with unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.hgetall(meta_key(session_id))
            raws = await pipe.execute()
        return [record_from_hash(raw) if raw else None for raw in raws]

    async def read_vectors(
        self, record: SessionRecord, fields: Sequence[str]
    ) -> dict[str, FloatArray] | None:
        """The vectors of the record's version, or None when a chunk has gone.

        A chunk goes when a concurrent commit replaced that version; the caller then
        reads the record again.
        """
        count = chunk_count(record)
        keys = chunk_keys(record.id, record.head, fields, count)
        dtype = np.dtype(record.dtype).newbyteorder("<")
        vectors = {name: np.empty(record.size, dtype=record.dtype) for name in fields}
        per_trip = max(1, self._round_trip_bytes // (record.chunk_elements * dtype.itemsize))
        async with unavailable_on_error():
            for first in range(0, len(keys), per_trip):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in keys[first : first + per_trip]:
                        pipe.get(key)
                    chunks: list[bytes | None] = await pipe.execute()
                for offset, chunk in enumerate(chunks):
                    if chunk is None:
                        return None
                    field, i = divmod(first + offset, count)
                    start = i * record.chunk_elements
                    vectors[fields[field]][start : start + record.chunk_elements] = np.frombuffer(
                        chunk, dtype=dtype
                    )
        return vectors

    async def read_idempotency(self, session_id: str, key: str) -> IdempotencyRecord | None:
        """The idempotency record of ``key``, if any."""
        async with unavailable_on_error():
            raw = await self._redis.get(idempotency_key(session_id, key))
        return None if raw is None else IdempotencyRecord.decode(text(raw))

    async def list_ids(self, tenant: str, *, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` of the tenant's session ids in creation order, after ``after``."""
        start = b"-" if after is None else b"(" + after.encode()
        async with unavailable_on_error():
            ids = await self._redis.zrangebylex(
                tenant_index_key(tenant), start, b"+", start=0, num=limit
            )
        return [text(raw) for raw in ids]

    async def reserve(
        self, record: SessionRecord, *, max_sessions: int, max_parameters: int
    ) -> QuotaRefusal | None:
        """Index a new session in its tenant's quota; a refusal when over a limit."""
        keys = [tenant_index_key(record.tenant), tenant_sizes_key(record.tenant)]
        async with unavailable_on_error(write=True):
            reply = await self._reserve(
                keys=keys, args=[record.id, record.size, max_sessions, max_parameters]
            )
        if int(reply[0]) == 1:
            return None
        return QuotaRefusal(text(reply[1]), int(reply[2]))

    async def release(self, tenant: str, session_id: str) -> None:
        """Take a session out of its tenant's index and quota."""
        async with unavailable_on_error(write=True), self._redis.pipeline() as pipe:
            pipe.zrem(tenant_index_key(tenant), session_id)
            pipe.hdel(tenant_sizes_key(tenant), session_id)
            await pipe.execute()

    async def claim_create(self, tenant: str, key: str, value: str, ttl_ms: int) -> str:
        """Record a create's Idempotency-Key unless it is recorded; return what is recorded."""
        name = create_idempotency_key(tenant, key)
        async with unavailable_on_error(write=True), self._redis.pipeline() as pipe:
            pipe.set(name, value, nx=True, px=ttl_ms)
            pipe.get(name)
            _, recorded = await pipe.execute()
        return text(recorded)

    async def create(self, record: SessionRecord, vectors: Mapping[str, FloatArray]) -> WriteStatus:
        """Store a new session (its record and first version): COMMITTED or ID_TAKEN."""
        outcome = await self.commit(
            record, expected_rev=None, vectors=vectors, changes=record_to_hash(record)
        )
        return outcome.status

    async def commit(
        self,
        new: SessionRecord,
        *,
        expected_rev: int | None,
        vectors: Mapping[str, FloatArray] | None = None,
        old_keys: Sequence[str] = (),
        changes: MetaFields | None = None,
        idempotency: IdempotencyClaim | None = None,
    ) -> WriteOutcome:
        """Make a change current if the session is still at ``expected_rev``.

        ``vectors``, when given, are a new version named by ``new.head``: their chunks
        are written with a TTL (in round trips of at most ``round_trip_bytes``, the last
        one carrying the commit script) and deleted again if the commit does not happen.
        ``old_keys`` are unlinked by a successful commit; ``changes`` are set on the meta
        hash. ``expected_rev`` None creates the session. With ``idempotency``, the
        commit is refused as a replay when the key is recorded already, and the record
        is written with the commit otherwise.

        A store failure before the commit script was sent is ``StoreUnavailable``;
        after, ``OutcomeUnknown``.
        """
        meta = meta_key(new.id)
        idem_key, idem_value, idem_ttl = meta, "", 0
        if idempotency is not None:
            idem_key = idempotency_key(new.id, idempotency.key)
            idem_value, idem_ttl = idempotency.record.encode(), idempotency.ttl_ms
        written: list[str] = []
        # Chunks are deleted when the commit surely did not happen; when its outcome is
        # unknown they stay: persisted if it happened, expiring if it did not.
        discard = True
        try:
            batches = [] if vectors is None else list(self._chunk_batches(new, vectors))
            async with unavailable_on_error():
                for batch in batches[:-1]:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for key, data in batch:
                            pipe.set(key, data, px=self._pending_ttl_ms)
                            written.append(key)
                        await pipe.execute()
            last = batches[-1] if batches else []
            keys = [
                meta,
                idem_key,
                idempotency_index_key(new.id),
                *written,
                *(key for key, _ in last),
                *old_keys,
            ]
            args: list[Any] = [
                "" if expected_rev is None else expected_rev,
                len(written) + len(last),
                idem_value,
                idem_ttl,
            ]
            for field, value in (changes or {}).items():
                args += [field, value]
            discard = False
            async with (
                unavailable_on_error(write=True),
                self._redis.pipeline(transaction=False) as pipe,
            ):
                for key, data in last:
                    pipe.set(key, data, px=self._pending_ttl_ms)
                    written.append(key)
                # A plain EVALSHA: redis-py's Script in a pipeline would add a SCRIPT
                # EXISTS round trip to every commit.
                pipe.evalsha(self._commit.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
                reply = replies[-1]
                if isinstance(reply, NoScriptError):
                    reply = await self._commit(keys=keys, args=args)
                discard = True  # an answer came: the outcome is known
                for failed in replies[:-1]:
                    if isinstance(failed, Exception):
                        # The script found those chunks missing and committed nothing.
                        raise failed
                if isinstance(reply, Exception):
                    raise reply
            outcome = _outcome(reply)
            discard = outcome.status is not WriteStatus.COMMITTED
            return outcome
        finally:
            if discard:
                await self._discard(written)

    async def delete(self, record: SessionRecord) -> WriteStatus:
        """Delete the session if it is still at ``record.rev``, with its idempotency
        records, and take it out of its tenant's index and quota."""
        keys = [meta_key(record.id), idempotency_index_key(record.id), *version_keys(record)]
        async with unavailable_on_error(write=True):
            status = WriteStatus(int((await self._delete(keys=keys, args=[record.rev]))[0]))
        if status is WriteStatus.COMMITTED:
            await self.release(record.tenant, record.id)
        return status

    async def take_token(self, key_id: str, *, rate: float, burst: int) -> RateDecision:
        """Take a token from the key's bucket (shared by every replica)."""
        async with unavailable_on_error():
            allowed, remaining, wait = await self._rate(keys=[rate_key(key_id)], args=[rate, burst])
        return RateDecision(int(allowed) == 1, float(remaining), float(wait))

    def _chunk_batches(
        self, record: SessionRecord, vectors: Mapping[str, FloatArray]
    ) -> Iterator[list[tuple[str, memoryview]]]:
        """The chunks of a version, in batches of at most ``round_trip_bytes``."""
        keys = iter(chunk_keys(record.id, record.head, vectors, chunk_count(record)))
        dtype = np.dtype(record.dtype).newbyteorder("<")
        step = record.chunk_elements
        itemsize = dtype.itemsize
        batch: list[tuple[str, memoryview]] = []
        size = 0
        for vector in vectors.values():
            data = np.ascontiguousarray(vector, dtype=dtype).data.cast("B")
            for start in range(0, record.size, step):
                chunk = data[start * itemsize : (start + step) * itemsize]
                if batch and size + len(chunk) > self._round_trip_bytes:
                    yield batch
                    batch, size = [], 0
                batch.append((next(keys), chunk))
                size += len(chunk)
        if batch:
            yield batch

    async def _discard(self, keys: Sequence[str]) -> None:
        """Unlink chunks that will never be committed (best effort)."""
        if not keys:
            return
        with contextlib.suppress(RedisError, OSError, StoreUnavailable):
            for first in range(0, len(keys), 1000):  # if not, they expire on their own
                await self._redis.unlink(*keys[first : first + 1000])
