"""Sessions in Redis: the only module that sends commands to it.

A new version of a session's vectors is written under a fresh write id with a TTL and
made current by ``commit.lua``, which checks the fencing ``rev``; see
docs/architecture.md, "The commit protocol".
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import numpy as np
import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
from adamhub_service.storage.keys import INDEX_KEY, chunk_keys, idempotency_key, meta_key
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


class RedisStore:
    """Sessions in one Redis (or one Redis Cluster slot per session)."""

    def __init__(self, client: redis.Redis, *, pending_write_ttl_ms: int) -> None:
        self._redis = client
        self._pending_ttl_ms = pending_write_ttl_ms
        self._commit = client.register_script(_load_script("commit.lua"))
        self._delete = client.register_script(_load_script("delete.lua"))

    @classmethod
    def from_url(
        cls, url: str, *, timeout_seconds: float, max_connections: int, pending_write_ttl_ms: int
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
        return cls(client, pending_write_ttl_ms=pending_write_ttl_ms)

    async def close(self) -> None:
        """Close every connection."""
        await self._redis.aclose()

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""
        async with _unavailable_on_error():
            await self._redis.ping()

    async def read_record(self, session_id: str) -> SessionRecord | None:
        """The session's record, or None when there is no such session."""
        async with _unavailable_on_error():
            raw = await self._redis.hgetall(meta_key(session_id))
        return record_from_hash(raw) if raw else None

    async def read_records(self, session_ids: Sequence[str]) -> list[SessionRecord | None]:
        """The records of several sessions (None for those that are gone)."""
        async with _unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
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
        async with _unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            chunks: list[bytes | None] = await pipe.execute()
        dtype = np.dtype(record.dtype).newbyteorder("<")
        vectors: dict[str, FloatArray] = {}
        for index, name in enumerate(fields):
            vector = np.empty(record.size, dtype=record.dtype)
            for i, chunk in enumerate(chunks[index * count : (index + 1) * count]):
                if chunk is None:
                    return None
                start = i * record.chunk_elements
                vector[start : start + record.chunk_elements] = np.frombuffer(chunk, dtype=dtype)
            vectors[name] = vector
        return vectors

    async def read_idempotency(self, session_id: str, key: str) -> IdempotencyRecord | None:
        """The idempotency record of ``key``, if any."""
        async with _unavailable_on_error():
            raw = await self._redis.get(idempotency_key(session_id, key))
        return None if raw is None else IdempotencyRecord.decode(text(raw))

    async def list_ids(self, *, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` session ids in creation order, after ``after``."""
        start = b"-" if after is None else b"(" + after.encode()
        async with _unavailable_on_error():
            ids = await self._redis.zrangebylex(INDEX_KEY, start, b"+", start=0, num=limit)
        return [text(raw) for raw in ids]

    async def create(self, record: SessionRecord, vectors: Mapping[str, FloatArray]) -> None:
        """Store a new session (its record and its first version)."""
        async with _unavailable_on_error():
            await self._redis.zadd(INDEX_KEY, {record.id: 0})
        outcome = await self.commit(
            record, expected_rev=None, vectors=vectors, changes=record_to_hash(record)
        )
        if outcome.status is not WriteStatus.COMMITTED:
            raise RuntimeError(f"could not create session {record.id}: {outcome.status.name}")

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

        ``vectors``, when given, are a new version named by ``new.head``: they are
        written in the same round trip as the commit, and deleted again if it fails.
        ``old_keys`` are unlinked by a successful commit; ``changes`` are set on the meta
        hash. ``expected_rev`` None creates the session. With ``idempotency``, the
        commit is refused as a replay when the key is recorded already, and the record
        is written with the commit otherwise.
        """
        meta = meta_key(new.id)
        idem_key, idem_value, idem_ttl = (
            (
                idempotency_key(new.id, idempotency.key),
                idempotency.record.encode(),
                idempotency.ttl_ms,
            )
            if idempotency
            else (meta, "", 0)
        )
        async with _unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
            written = [] if vectors is None else self._queue_vectors(pipe, new, vectors)
            keys = [meta, idem_key, *written, *old_keys]
            args: list[Any] = [
                "" if expected_rev is None else expected_rev,
                len(written),
                idem_value,
                idem_ttl,
            ]
            for field, value in (changes or {}).items():
                args += [field, value]
            # A plain EVALSHA: redis-py's Script in a pipeline would add a SCRIPT EXISTS
            # round trip to every commit.
            pipe.evalsha(self._commit.sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
            for reply in replies[:-1]:
                if isinstance(reply, Exception):
                    raise reply
            reply = replies[-1]
            if isinstance(reply, NoScriptError):
                reply = await self._commit(keys=keys, args=args)
            elif isinstance(reply, Exception):
                raise reply
        outcome = _outcome(reply)
        if outcome.status is not WriteStatus.COMMITTED:
            await self._discard(written)
        return outcome

    async def delete(self, record: SessionRecord) -> WriteStatus:
        """Delete the session if it is still at ``record.rev``."""
        keys = [meta_key(record.id), *version_keys(record)]
        async with _unavailable_on_error():
            status = WriteStatus(int((await self._delete(keys=keys, args=[record.rev]))[0]))
            if status is WriteStatus.COMMITTED:
                await self._redis.zrem(INDEX_KEY, record.id)
        return status

    def _queue_vectors(
        self, pipe: Pipeline, record: SessionRecord, vectors: Mapping[str, FloatArray]
    ) -> list[str]:
        keys = chunk_keys(record.id, record.head, vectors, chunk_count(record))
        dtype = np.dtype(record.dtype).newbyteorder("<")
        step = record.chunk_elements
        itemsize = dtype.itemsize
        key_iter = iter(keys)
        for vector in vectors.values():
            data = np.ascontiguousarray(vector, dtype=dtype).data.cast("B")
            for start in range(0, record.size, step):
                pipe.set(
                    next(key_iter),
                    data[start * itemsize : (start + step) * itemsize],
                    px=self._pending_ttl_ms,
                )
        return keys

    async def _discard(self, keys: Sequence[str]) -> None:
        """Unlink chunks that will never be committed (best effort)."""
        if not keys:
            return
        with contextlib.suppress(RedisError):  # if not, they expire on their own
            await self._redis.unlink(*keys)


@asynccontextmanager
async def _unavailable_on_error() -> AsyncIterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailable(f"the store did not answer: {exc}") from exc
    except RedisError as exc:
        if "LOADING" in str(exc) or "BUSY" in str(exc) or "MASTERDOWN" in str(exc):
            raise StoreUnavailable(f"the store is not ready: {exc}") from exc
        raise
