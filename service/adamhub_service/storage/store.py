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
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from adamhub_service.errors import StoreUnavailable
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import AdamConfig, AdamState, FloatArray
from adamhub_service.sessions.records import SessionRecord, new_write_id
from adamhub_service.storage.encoding import (
    MetaFields,
    chunk_count,
    record_changes,
    record_from_hash,
    record_to_hash,
    text,
    vectors_of,
)
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keys import (
    EXPIRING_KEY,
    chunk_keys,
    create_idempotency_key,
    history_key,
    idempotency_index_key,
    idempotency_key,
    meta_key,
    rate_key,
    round_key,
    tenant_index_key,
    tenant_sizes_key,
)
from adamhub_service.storage.log import GRADIENT, Contribution, LogEntry, SnapshotRef
from adamhub_service.storage.outcomes import (
    AppendOutcome,
    ContributeOutcome,
    IdempotencyClaim,
    IdempotencyRecord,
    RoundView,
    WriteOutcome,
    WriteStatus,
)

_PACKAGE = resources.files("adamhub_service.storage")
# The session scripts share helpers, prepended to each.
_SESSION_SCRIPTS = (
    "append",
    "snapshot",
    "commit",
    "rollback",
    "delete",
    "load",
    "contribute",
    "seal",
    "drop",
)


def _load_script(name: str) -> str:
    source = _PACKAGE.joinpath("lua", f"{name}.lua").read_text()
    if name in _SESSION_SCRIPTS:
        source = _PACKAGE.joinpath("lua", "common.lua").read_text() + source
    return source


def _outcome(reply: Sequence[Any]) -> WriteOutcome:
    status = WriteStatus(int(reply[0]))
    if status is WriteStatus.COMMITTED and len(reply) > 1:
        return WriteOutcome(status, rev=int(reply[1]))
    return WriteOutcome(status)


@dataclass(frozen=True, slots=True)
class StoredSession:
    """What a replica rebuilds a session's state from: the newest snapshot (its
    vectors, step and the optimizer config of that step) and every logged step after
    it, with its gradient."""

    record: SessionRecord
    snapshot_config: AdamConfig
    snapshot: dict[str, FloatArray]
    snapshot_t: int
    log: list[tuple[LogEntry, FloatArray]]


@dataclass(frozen=True, slots=True)
class LoggedStep:
    """A step to log: its entry, its gradient (in the entry's dtype), its idempotency
    record to write unless the key is recorded already, its history point (JSON)."""

    entry: LogEntry
    gradient: FloatArray
    idempotency: IdempotencyClaim | None = None
    point: str | None = None


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
        metrics: Metrics | None = None,
    ) -> None:
        self._redis = client
        self._metrics = metrics
        self._pending_ttl_ms = pending_write_ttl_ms
        self._round_trip_bytes = round_trip_bytes
        self._append = client.register_script(_load_script("append"))
        self._snapshot = client.register_script(_load_script("snapshot"))
        self._commit = client.register_script(_load_script("commit"))
        self._rollback = client.register_script(_load_script("rollback"))
        self._delete = client.register_script(_load_script("delete"))
        self._load = client.register_script(_load_script("load"))
        self._contribute = client.register_script(_load_script("contribute"))
        self._seal = client.register_script(_load_script("seal"))
        self._drop = client.register_script(_load_script("drop"))
        self._reserve = client.register_script(_load_script("reserve"))
        self._rate = client.register_script(_load_script("rate"))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_seconds: float,
        max_connections: int,
        pending_write_ttl_ms: int,
        round_trip_bytes: int = 64 << 20,
        metrics: Metrics | None = None,
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
            client,
            pending_write_ttl_ms=pending_write_ttl_ms,
            round_trip_bytes=round_trip_bytes,
            metrics=metrics,
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

    async def load(self, session_id: str) -> StoredSession | WriteStatus:
        """The record, newest snapshot and log after it of a session; ``GONE`` when there
        is no such session, ``CONFLICT`` when a concurrent change retired what was read."""
        async with unavailable_on_error():
            reply = await self._load(keys=[meta_key(session_id)])
        if not reply:
            return WriteStatus.GONE
        raw_record, raw_snapshot, snapshot_t, raw_entries = reply
        record = record_from_hash(dict(zip(raw_record[::2], raw_record[1::2], strict=True)))
        if raw_snapshot is None or any(entry is None for entry in raw_entries):
            return WriteStatus.CONFLICT
        snapshot = SnapshotRef.decode(raw_snapshot)
        entries = [LogEntry.decode(entry) for entry in raw_entries]
        fields = tuple(snapshot.vectors)
        vectors = {name: np.empty(record.size, dtype=record.dtype) for name in fields}
        targets = [
            (chunk_keys(record.id, snapshot.write_id, (name,), chunk_count(record)), vector)
            for name, vector in vectors.items()
        ]
        gradients = [np.empty(record.size, dtype=entry.dtype) for entry in entries]
        targets += [
            (chunk_keys(record.id, entry.write_id, (GRADIENT,), chunk_count(record)), gradient)
            for entry, gradient in zip(entries, gradients, strict=True)
        ]
        if not await self._read_into(record, targets):
            return WriteStatus.CONFLICT
        log = list(zip(entries, gradients, strict=True))
        return StoredSession(record, snapshot.config, vectors, int(snapshot_t), log)

    async def _read_into(
        self, record: SessionRecord, targets: Sequence[tuple[Sequence[str], FloatArray]]
    ) -> bool:
        """Read chunked vectors into arrays; False when a chunk has gone."""
        plan = [
            (key, vector, i * record.chunk_elements)
            for keys, vector in targets
            for i, key in enumerate(keys)
        ]
        per_trip = max(1, self._round_trip_bytes // (record.chunk_elements * 8))
        async with unavailable_on_error():
            for first in range(0, len(plan), per_trip):
                batch = plan[first : first + per_trip]
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, _, _ in batch:
                        pipe.get(key)
                    chunks: list[bytes | None] = await pipe.execute()
                for (_, vector, start), chunk in zip(batch, chunks, strict=True):
                    if chunk is None:
                        return False
                    dtype = vector.dtype.newbyteorder("<")
                    part = np.frombuffer(chunk, dtype=dtype)
                    vector[start : start + part.size] = part
        return True

    async def history(self, session_id: str, *, after_t: int | None, limit: int) -> list[bytes]:
        """Up to ``limit`` history points (JSON), oldest first: those after step
        ``after_t``, or the newest when it is None."""
        key = history_key(session_id)
        async with unavailable_on_error():
            if after_t is None:
                points: Any = await self._redis.zrange(key, -limit, -1)
            else:
                points = await self._redis.zrangebyscore(
                    key, f"({after_t}", "+inf", start=0, num=limit
                )
        return list(points)

    async def read_idempotency(self, session_id: str, key: str) -> IdempotencyRecord | None:
        """The idempotency record of ``key``, if any."""
        async with unavailable_on_error():
            raw = await self._redis.get(idempotency_key(session_id, key))
        return None if raw is None else IdempotencyRecord.decode(text(raw))

    async def track_expiry(self, session_id: str, *, expires: bool) -> None:
        """Put the session in (or take it out of) the index of expiring sessions."""
        async with unavailable_on_error(write=True):
            if expires:
                await self._redis.sadd(EXPIRING_KEY, session_id)
            else:
                await self._redis.srem(EXPIRING_KEY, session_id)

    async def expiring_ids(self) -> list[str]:
        """The ids in the index of expiring sessions."""
        async with unavailable_on_error():
            ids = await self._redis.smembers(EXPIRING_KEY)
        return sorted(text(raw) for raw in ids)

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

    async def create(self, record: SessionRecord, state: AdamState) -> WriteStatus:
        """Store a new session, its state as the snapshot of step ``record.t``: COMMITTED
        or ID_TAKEN."""
        outcome = await self._commit_snapshot(
            record, expected_rev=None, state=state, changes=record_to_hash(record)
        )
        return outcome.status

    async def reset(
        self, current: SessionRecord, new: SessionRecord, state: AdamState
    ) -> WriteOutcome:
        """Start a session over from ``state`` at step 0, dropping its log and snapshots,
        if it is still at ``current.rev``."""
        changes = record_changes(t=0, head=new.head, updated_at=new.updated_at)
        return await self._commit_snapshot(
            new, expected_rev=current.rev, state=state, changes=changes
        )

    async def update_record(self, current: SessionRecord, changes: MetaFields) -> WriteOutcome:
        """Set fields of the record if the session is still at ``current.rev``."""
        args: list[Any] = [current.rev, "", *_pairs(changes)]
        async with unavailable_on_error(write=True):
            reply = await self._commit(keys=[meta_key(current.id)], args=args)
        return _outcome(reply)

    async def _commit_snapshot(
        self,
        record: SessionRecord,
        *,
        expected_rev: int | None,
        state: AdamState,
        changes: MetaFields,
    ) -> WriteOutcome:
        ref = SnapshotRef(record.head, "".join(vectors_of(state)), record.optimizer)
        chunks = self._state_chunks(record, ref.write_id, state)
        args: list[Any] = [
            "" if expected_rev is None else expected_rev,
            ref.encode(),
            *_pairs(changes),
        ]
        reply = await self._write_then_run(self._commit, [meta_key(record.id)], chunks, args)
        return _outcome(reply)

    async def append(
        self,
        current: SessionRecord,
        new: SessionRecord,
        steps: Sequence[LoggedStep],
        *,
        idempotency_ttl_ms: int,
        round_contributions: int | None = None,
    ) -> AppendOutcome:
        """Log ``steps`` (the steps after ``current.t``, in order) and make ``new`` the
        record, if the session is still at ``current.rev``: one compare-and-set for all.

        With ``round_contributions``, the one step is the close of the open round, which
        must still hold that many contributions (else ``CONFLICT``); it is dropped.
        A step's idempotency key that is recorded already refuses the whole group as
        ``REPLAYED`` with that step's index. Store failures are as in ``_write_then_run``.
        """
        meta = meta_key(current.id)
        idem_keys = [
            meta if step.idempotency is None else idempotency_key(current.id, step.idempotency.key)
            for step in steps
        ]
        chunks: list[tuple[str, memoryview]] = []
        for step in steps:
            chunks += _chunked(
                chunk_keys(current.id, step.entry.write_id, (GRADIENT,), chunk_count(current)),
                step.gradient,
                current.chunk_elements,
            )
        args: list[Any] = [
            current.rev,
            len(steps),
            current.t,
            idempotency_ttl_ms,
            sum(step.entry.nbytes for step in steps),
            "" if round_contributions is None else round_contributions,
            *(step.entry.encode() for step in steps),
            *(step.idempotency.record.encode() if step.idempotency else "" for step in steps),
            *(step.point or "" for step in steps),
            *_pairs(record_changes(**_step_changes(current, new))),
        ]
        reply = await self._write_then_run(
            self._append, [meta, idempotency_index_key(current.id), *idem_keys], chunks, args
        )
        status = WriteStatus(int(reply[0]))
        if status is WriteStatus.COMMITTED:
            return AppendOutcome(status, rev=int(reply[1]), log_bytes=int(reply[2]))
        if status is WriteStatus.REPLAYED:
            return AppendOutcome(
                status,
                replay_index=int(reply[1]) - 1,
                replay=IdempotencyRecord.decode(text(reply[2])),
            )
        return AppendOutcome(status)

    async def contribute(
        self,
        record: SessionRecord,
        contribution: Contribution,
        gradient: FloatArray,
        *,
        base_step: int | None,
        idempotency: IdempotencyClaim | None,
    ) -> ContributeOutcome:
        """Add a contribution (``gradient``, in its entry's dtype) to the session's open
        round, if it is computed at that round's base (``None``: whichever is open).
        ``idempotency.record``'s step is ignored: the script records the round's."""
        meta = meta_key(record.id)
        idem = meta if idempotency is None else idempotency_key(record.id, idempotency.key)
        chunks = _chunked(
            chunk_keys(record.id, contribution.write_id, (GRADIENT,), chunk_count(record)),
            gradient,
            record.chunk_elements,
        )
        args: list[Any] = [
            "" if base_step is None else base_step,
            contribution.encode(),
            contribution.samples,
            "" if idempotency is None else idempotency.record.digest,
            0 if idempotency is None else idempotency.ttl_ms,
        ]
        reply = await self._write_then_run(
            self._contribute, [meta, idempotency_index_key(record.id), idem], chunks, args
        )
        status = WriteStatus(int(reply[0]))
        if status is WriteStatus.COMMITTED:
            base, n, samples, complete, first_ms, now_ms = (int(part) for part in reply[1:7])
            return ContributeOutcome(status, base, n, samples, complete == 1, first_ms, now_ms)
        if status is WriteStatus.REPLAYED:
            return ContributeOutcome(status, replay=IdempotencyRecord.decode(text(reply[1])))
        if status in (WriteStatus.STALE, WriteStatus.SEALED):
            return ContributeOutcome(status, base=int(reply[1]))
        return ContributeOutcome(status)

    async def seal(self, session_id: str, base: int, *, grace_ms: int) -> RoundView:
        """The open round stepping from ``base``, sealed for this caller to close when
        it is due (see ``lua/seal.lua``)."""
        async with unavailable_on_error(write=True):
            reply = await self._seal(keys=[meta_key(session_id)], args=[base, grace_ms])
        head = int(reply[0])
        if head == 1:
            return RoundView(WriteStatus.COMMITTED, True, int(reply[1]), int(reply[2]))
        if head == 0:
            n, samples, first_ms, sealed_ms, now_ms = (int(part) for part in reply[1:6])
            return RoundView(WriteStatus.COMMITTED, False, n, samples, first_ms, sealed_ms, now_ms)
        if head == WriteStatus.DROPPED:
            return RoundView(WriteStatus.DROPPED, dropped=text(reply[1]))
        return RoundView(WriteStatus(head))

    async def drop_round(
        self, session_id: str, base: int, contributions: int, why: str
    ) -> WriteStatus:
        """Drop the open round at ``base`` if it still holds ``contributions``, noting
        ``why`` for its waiters (see ``lua/drop.lua``)."""
        async with unavailable_on_error(write=True):
            reply = await self._drop(keys=[meta_key(session_id)], args=[base, contributions, why])
        return WriteStatus(int(reply[0]))

    async def round_contributions(
        self,
        record: SessionRecord,
        contributions: int,
        known: Mapping[str, FloatArray] | None = None,
    ) -> list[tuple[Contribution, FloatArray]] | None:
        """The first ``contributions`` of the round stepping from ``record.t``, in their
        order, with their gradients (those in ``known``, by write id, are not read);
        None when the round is no longer that one."""
        async with unavailable_on_error():
            raw = await self._redis.hgetall(round_key(record.id))
        fields = {text(name): value for name, value in raw.items()}
        if text(fields.get("base", b"")) != str(record.t):
            return None
        entries = [fields.get(str(i)) for i in range(1, contributions + 1)]
        if any(entry is None for entry in entries):
            return None
        taken = [Contribution.decode(entry) for entry in entries if entry is not None]
        known = known or {}
        gradients = [
            known.get(entry.write_id, np.empty(record.size, dtype=entry.dtype)) for entry in taken
        ]
        targets = [
            (chunk_keys(record.id, entry.write_id, (GRADIENT,), chunk_count(record)), gradient)
            for entry, gradient in zip(taken, gradients, strict=True)
            if entry.write_id not in known
        ]
        if not await self._read_into(record, targets):
            return None
        return list(zip(taken, gradients, strict=True))

    async def snapshot(
        self, record: SessionRecord, entry: LogEntry, state: AdamState, config: AdamConfig
    ) -> tuple[WriteStatus, int]:
        """Make ``state`` (the state right after the logged ``entry`` of step
        ``state.step``) the session's newest snapshot; the status and, when committed, the
        bytes logged since. Does not change the session's rev."""
        ref = SnapshotRef(new_write_id(), "".join(vectors_of(state)), config)
        chunks = self._state_chunks(record, ref.write_id, state)
        args = [state.step, entry.encode(), ref.encode()]
        reply = await self._write_then_run(self._snapshot, [meta_key(record.id)], chunks, args)
        status = WriteStatus(int(reply[0]))
        return status, int(reply[1]) if status is WriteStatus.COMMITTED else 0

    async def rollback(self, current: SessionRecord, k: int, changes: MetaFields) -> WriteOutcome:
        """Return the session to the state right after step ``k``, if it is still at
        ``current.rev`` and the store keeps what that needs (else ``NO_HISTORY``)."""
        args: list[Any] = [current.rev, k, *_pairs(changes)]
        async with unavailable_on_error(write=True):
            reply = await self._rollback(keys=[meta_key(current.id)], args=args)
        status = WriteStatus(int(reply[0]))
        if status is WriteStatus.NO_HISTORY:
            return WriteOutcome(status, oldest_t=int(reply[1]))
        return _outcome(reply)

    async def delete(self, record: SessionRecord) -> WriteStatus:
        """Delete the session if it is still at ``record.rev``, with its snapshots, log and
        idempotency records, and take it out of its tenant's index and quota."""
        keys = [meta_key(record.id), idempotency_index_key(record.id)]
        async with unavailable_on_error(write=True):
            status = WriteStatus(int((await self._delete(keys=keys, args=[record.rev]))[0]))
        if status is WriteStatus.COMMITTED:
            await self.release(record.tenant, record.id)
        return status

    async def _write_then_run(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        chunks: Sequence[tuple[str, memoryview]],
        args: Sequence[Any],
    ) -> Any:
        """Write ``chunks`` with a TTL, then run ``script`` with them after ``keys``.

        The chunks go in round trips of at most ``round_trip_bytes``, the last one
        carrying the script, whose reply this returns. Unless it committed, the chunks
        are deleted again. A store failure before the script was sent is
        ``StoreUnavailable``; after, ``OutcomeUnknown``.
        """
        batches = list(_batches(chunks, self._round_trip_bytes))
        written: list[str] = []
        # Chunks are deleted when the commit surely did not happen; when its outcome is
        # unknown they stay: persisted if it happened, expiring if it did not.
        discard = True
        try:
            async with unavailable_on_error():
                for batch in batches[:-1]:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for key, data in batch:
                            pipe.set(key, data, px=self._pending_ttl_ms)
                            written.append(key)
                        await pipe.execute()
            last = batches[-1] if batches else []
            all_keys = [*keys, *written, *(key for key, _ in last)]
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
                pipe.evalsha(script.sha, len(all_keys), *all_keys, *args)
                replies = await pipe.execute(raise_on_error=False)
                reply = replies[-1]
                if isinstance(reply, NoScriptError):
                    reply = await script(keys=all_keys, args=args)
                discard = True  # an answer came: the outcome is known
                if self._metrics is not None:
                    self._metrics.store_written_bytes.inc(sum(len(data) for _, data in chunks))
                for failed in replies[:-1]:
                    if isinstance(failed, Exception):
                        # The script found those chunks missing and committed nothing.
                        raise failed
                if isinstance(reply, Exception):
                    raise reply
            discard = WriteStatus(int(reply[0])) is not WriteStatus.COMMITTED
            return reply
        finally:
            if discard:
                await self._discard(written)

    def _state_chunks(
        self, record: SessionRecord, write_id: str, state: AdamState
    ) -> list[tuple[str, memoryview]]:
        chunks: list[tuple[str, memoryview]] = []
        for name, vector in vectors_of(state).items():
            keys = chunk_keys(record.id, write_id, (name,), chunk_count(record))
            chunks += _chunked(keys, vector, record.chunk_elements)
        return chunks

    async def take_token(self, key_id: str, *, rate: float, burst: int) -> RateDecision:
        """Take a token from the key's bucket (shared by every replica)."""
        async with unavailable_on_error():
            allowed, remaining, wait = await self._rate(keys=[rate_key(key_id)], args=[rate, burst])
        return RateDecision(int(allowed) == 1, float(remaining), float(wait))

    async def _discard(self, keys: Sequence[str]) -> None:
        """Unlink chunks that will never be committed (best effort)."""
        if not keys:
            return
        with contextlib.suppress(RedisError, OSError, StoreUnavailable):
            for first in range(0, len(keys), 1000):  # if not, they expire on their own
                await self._redis.unlink(*keys[first : first + 1000])


def _step_changes(current: SessionRecord, new: SessionRecord) -> dict[str, Any]:
    """The record fields a group of steps changes: t, head, the time, and the optimizer
    when a step carried new settings."""
    changes: dict[str, Any] = {"t": new.t, "head": new.head, "updated_at": new.updated_at}
    if new.optimizer != current.optimizer:
        changes["optimizer"] = new.optimizer
    return changes


def _pairs(changes: MetaFields) -> list[Any]:
    return [part for field, value in changes.items() for part in (field, value)]


def _chunked(
    keys: Sequence[str], vector: FloatArray, chunk_elements: int
) -> list[tuple[str, memoryview]]:
    """A vector's little-endian bytes, cut into chunks named by ``keys``."""
    dtype = vector.dtype.newbyteorder("<")
    data = np.ascontiguousarray(vector, dtype=dtype).data.cast("B")
    step = chunk_elements * dtype.itemsize
    return [(key, data[i * step : (i + 1) * step]) for i, key in enumerate(keys)]


def _batches(
    chunks: Sequence[tuple[str, memoryview]], limit: int
) -> Iterator[list[tuple[str, memoryview]]]:
    """Chunks in batches of at most ``limit`` bytes (at least one chunk each)."""
    batch: list[tuple[str, memoryview]] = []
    size = 0
    for key, data in chunks:
        if batch and size + len(data) > limit:
            yield batch
            batch, size = [], 0
        batch.append((key, data))
        size += len(data)
    if batch:
        yield batch
