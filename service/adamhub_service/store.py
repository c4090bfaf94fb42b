"""Persistence of sessions in Redis: the only module that talks to it.

Layout, every key of a session under one hash tag so it lives in one cluster slot:

- ``adamhub:{<id>}:meta``: a hash, the ``SessionRecord`` (``rev``, ``head``, ``t``, …)
- ``adamhub:{<id>}:c:<write id>:<vector>:<i>``: chunk ``i`` of a vector, raw
  little-endian bytes of the session dtype
- ``adamhub:{<id>}:idem:<key>``: an idempotency record, ``<digest>:<applied t>``
- ``adamhub:sessions``: a sorted set of all session ids, for listing

A new version is written under a fresh write id with a TTL and made current by the
``commit`` script, which checks the fencing ``rev``; see DESIGN.md, "Storage in Redis".
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import orjson
import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adamhub_service.errors import StoreUnavailable
from adamhub_service.optim import AdamConfig, FloatArray
from adamhub_service.records import SessionRecord

INDEX_KEY = "adamhub:sessions"


def meta_key(session_id: str) -> str:
    """The key of a session's meta hash."""
    return f"adamhub:{{{session_id}}}:meta"


def chunk_keys(record: SessionRecord, write_id: str, fields: Iterable[str]) -> list[str]:
    """The keys of every chunk of ``fields`` in the version ``write_id``."""
    prefix = f"adamhub:{{{record.id}}}:c:{write_id}:"
    return [f"{prefix}{name}:{i}" for name in fields for i in range(record.chunk_count)]


def idempotency_key(session_id: str, key: str) -> str:
    """The key of an idempotency record."""
    return f"adamhub:{{{session_id}}}:idem:{key}"


def _load_script(name: str) -> str:
    return resources.files("adamhub_service").joinpath("lua", name).read_text()


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """What the commit script found: exactly one of the attributes says what happened."""

    committed_rev: int | None = None
    replay_record: str | None = None
    conflict: bool = False
    gone: bool = False
    expired: bool = False


_RECORD_INT_FIELDS = ("size", "chunk_elements", "t", "rev")
_RECORD_JSON_FIELDS = ("optimizer", "metadata", "name")


def _record_to_hash(record: SessionRecord) -> dict[str, bytes | str | int]:
    doc = dataclasses.asdict(record)
    doc.pop("rev")  # the commit script owns it
    return {
        key: orjson.dumps(value) if key in _RECORD_JSON_FIELDS else value
        for key, value in doc.items()
    }


def _record_from_hash(raw: Mapping[Any, Any]) -> SessionRecord:
    doc: dict[str, Any] = {_text(key): value for key, value in raw.items()}
    for name in _RECORD_INT_FIELDS:
        doc[name] = int(doc[name])
    for name in _RECORD_JSON_FIELDS:
        doc[name] = orjson.loads(doc[name])
    for name in ("id", "dtype", "head", "created_at", "updated_at"):
        doc[name] = _text(doc[name])
    doc["optimizer"] = AdamConfig(**doc["optimizer"])
    return SessionRecord(**doc)


def record_changes(**fields: Any) -> dict[str, bytes | str | int]:
    """Meta hash fields for a partial update of a record."""
    return {
        key: orjson.dumps(dataclasses.asdict(value) if key == "optimizer" else value)
        if key in _RECORD_JSON_FIELDS
        else value
        for key, value in fields.items()
    }


def _commit_outcome(reply: Sequence[Any]) -> CommitOutcome:
    status = int(reply[0])
    if status == 1:
        return CommitOutcome(committed_rev=int(reply[1]))
    if status == 2:
        return CommitOutcome(replay_record=_text(reply[1]))
    if status == 0:
        return CommitOutcome(gone=True) if reply[1] is None else CommitOutcome(conflict=True)
    if status == -1:
        return CommitOutcome(conflict=True)
    return CommitOutcome(expired=True)


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
        return _record_from_hash(raw) if raw else None

    async def read_vectors(
        self, record: SessionRecord, fields: Sequence[str]
    ) -> dict[str, FloatArray] | None:
        """The vectors of the record's version, or None when a chunk has gone.

        A chunk goes when a concurrent commit replaced that version; the caller then
        reads the record again.
        """
        keys = chunk_keys(record, record.head, fields)
        async with _unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            chunks: list[bytes | None] = await pipe.execute()
        dtype = np.dtype(record.dtype).newbyteorder("<")
        vectors: dict[str, FloatArray] = {}
        per_field = record.chunk_count
        for index, name in enumerate(fields):
            vector = np.empty(record.size, dtype=record.dtype)
            for i, chunk in enumerate(chunks[index * per_field : (index + 1) * per_field]):
                if chunk is None:
                    return None
                start = i * record.chunk_elements
                vector[start : start + record.chunk_elements] = np.frombuffer(chunk, dtype=dtype)
            vectors[name] = vector
        return vectors

    async def write_vectors(
        self, record: SessionRecord, write_id: str, vectors: Mapping[str, FloatArray]
    ) -> list[str]:
        """Write a version's chunks with the pending TTL; return their keys."""
        async with _unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
            keys = self._queue_vectors(pipe, record, write_id, vectors)
            await pipe.execute()
        return keys

    def _queue_vectors(
        self,
        pipe: Pipeline,
        record: SessionRecord,
        write_id: str,
        vectors: Mapping[str, FloatArray],
    ) -> list[str]:
        keys = chunk_keys(record, write_id, vectors)
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

    async def discard(self, keys: Sequence[str]) -> None:
        """Unlink chunks that will never be committed (best effort)."""
        if not keys:
            return
        with contextlib.suppress(RedisError):  # if not, they expire on their own
            await self._redis.unlink(*keys)

    async def commit(
        self,
        session_id: str,
        *,
        expected_rev: int | None,
        new_version: tuple[SessionRecord, Mapping[str, FloatArray]] | None = None,
        new_keys: Sequence[str] = (),
        old_keys: Sequence[str] = (),
        changes: Mapping[str, bytes | str | int] | None = None,
        idempotency: tuple[str, str, int] | None = None,
    ) -> CommitOutcome:
        """Make a new version current if the session is still at ``expected_rev``.

        The new version's chunks are either ``new_version`` (a record naming the write
        id in ``head``, and its vectors), written here in the same round trip as the
        commit and deleted again if it fails, or ``new_keys``, written beforehand.
        ``expected_rev`` None creates the session. ``idempotency`` is
        ``(key, record, ttl_ms)``: the commit is refused with the existing record when
        the key is already recorded, and the record is written with the commit.
        """
        meta = meta_key(session_id)
        idem_key, idem_value, idem_ttl = (
            (idempotency_key(session_id, idempotency[0]), idempotency[1], idempotency[2])
            if idempotency
            else (meta, "", 0)
        )
        async with _unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
            written: list[str] = []
            if new_version is not None:
                written = self._queue_vectors(
                    pipe, new_version[0], new_version[0].head, new_version[1]
                )
            keys = [meta, idem_key, *written, *new_keys, *old_keys]
            args: list[Any] = [
                "" if expected_rev is None else expected_rev,
                len(written) + len(new_keys),
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
        outcome = _commit_outcome(reply)
        if outcome.committed_rev is None:
            await self.discard(written)
        return outcome

    async def create(self, record: SessionRecord, vectors: Mapping[str, FloatArray]) -> None:
        """Store a new session (its record and its first version)."""
        async with _unavailable_on_error():
            await self._redis.zadd(INDEX_KEY, {record.id: 0})
        outcome = await self.commit(
            record.id,
            expected_rev=None,
            new_version=(record, vectors),
            changes=_record_to_hash(record),
        )
        if outcome.committed_rev is None:
            raise RuntimeError(f"could not create session {record.id}: {outcome}")

    async def delete(self, record: SessionRecord) -> bool | None:
        """Delete the session at ``record.rev``: True done, False rev moved, None gone."""
        keys = [meta_key(record.id), *chunk_keys(record, record.head, record.fields)]
        async with _unavailable_on_error():
            status = int(await self._delete(keys=keys, args=[record.rev]))
            if status == 1:
                await self._redis.zrem(INDEX_KEY, record.id)
        return {1: True, 0: False}.get(status)

    async def list_ids(self, *, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` session ids in creation order, after ``after``."""
        start = b"-" if after is None else b"(" + after.encode()
        async with _unavailable_on_error():
            ids = await self._redis.zrangebylex(INDEX_KEY, start, b"+", start=0, num=limit)
        return [_text(raw) for raw in ids]

    async def read_records(self, session_ids: Sequence[str]) -> list[SessionRecord | None]:
        """The records of several sessions (None for those that are gone)."""
        async with _unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.hgetall(meta_key(session_id))
            raws = await pipe.execute()
        return [_record_from_hash(raw) if raw else None for raw in raws]

    async def read_idempotency(self, session_id: str, key: str) -> str | None:
        """The idempotency record of ``key``, if any."""
        async with _unavailable_on_error():
            raw = await self._redis.get(idempotency_key(session_id, key))
        return None if raw is None else _text(raw)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
