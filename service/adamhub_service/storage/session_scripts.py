"""A session's keys in Redis: the scripts that read and write one session, all in its
hash slot (``lua/``), and its chunked vectors.

A new version of a session's vectors is written under a fresh write id with a TTL and
made current by a script that checks the fencing ``rev``; see docs/architecture.md,
"The commit protocol".
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import redis.asyncio as redis

from adamhub_service.errors import StoreUnavailable
from adamhub_service.model.log import GRADIENT, SCALES, LogEntry, SnapshotRef
from adamhub_service.model.outcomes import (
    AppendOutcome,
    IdempotencyRecord,
    WriteOutcome,
    WriteStatus,
)
from adamhub_service.model.quantized import INT8_BLOCKS, Int8Blocks, LoggedGradient, blocks_of
from adamhub_service.model.records import SessionRecord, new_write_id
from adamhub_service.model.stored import LoggedStep, StoredSession
from adamhub_service.optim import AdamConfig, AdamState, FloatArray
from adamhub_service.storage.chunks import Chunk, StagedChunks, VectorChunks, chunked
from adamhub_service.storage.encoding import (
    MetaFields,
    chunk_count,
    chunks_of,
    record_changes,
    record_from_hash,
    record_to_hash,
    text,
    vectors_of,
)
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keyspace import (
    chunk_keys,
    history_key,
    idempotency_index_key,
    idempotency_key,
    meta_key,
)
from adamhub_service.storage.scripts import register
from adamhub_service.storage.series import newest_or_after


def _outcome(reply: Sequence[Any]) -> WriteOutcome:
    status = WriteStatus(int(reply[0]))
    if status is WriteStatus.COMMITTED and len(reply) > 1:
        return WriteOutcome(status, rev=int(reply[1]))
    return WriteOutcome(status)


class SessionScripts:
    """One session's record, snapshots, log, idempotency records and history points."""

    def __init__(self, client: redis.Redis, chunks: VectorChunks) -> None:
        self._redis = client
        self._chunks = chunks
        self._append = register(client, "append")
        self._snapshot = register(client, "snapshot")
        self._commit = register(client, "commit")
        self._rollback = register(client, "rollback")
        self._delete = register(client, "delete")
        self._load = register(client, "load")
        self._grow = register(client, "grow")

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

    async def load(
        self, session_id: str, *, since: tuple[int, str] | None = None
    ) -> StoredSession | WriteStatus:
        """The record, newest snapshot and log after it of a session; ``GONE`` when there
        is no such session, ``CONFLICT`` when a concurrent change retired what was read.

        ``since``: the step and head (its log entry's write id) of a state the caller
        holds. When the log still holds that entry, only the log after it is read: the
        answer's ``snapshot`` is empty and its ``snapshot_t`` is that step."""
        args: list[int | str] = [] if since is None else [since[0], since[1]]
        async with unavailable_on_error():
            reply = await self._load(keys=[meta_key(session_id)], args=args)
        if not reply:
            return WriteStatus.GONE
        raw_record, raw_snapshot, snapshot_t, raw_entries = reply
        record = record_from_hash(dict(zip(raw_record[::2], raw_record[1::2], strict=True)))
        if raw_snapshot is None or any(entry is None for entry in raw_entries):
            return WriteStatus.CONFLICT
        entries = [LogEntry.decode(entry) for entry in raw_entries]
        vectors: dict[str, FloatArray] = {}
        targets: list[tuple[Sequence[str], FloatArray]] = []
        config, segment_steps = record.optimizer, None
        if raw_snapshot:
            snapshot = SnapshotRef.decode(raw_snapshot)
            config, segment_steps = snapshot.config, snapshot.segment_steps
            fields = tuple(snapshot.vectors)
            vectors = {name: np.empty(record.size, dtype=record.dtype) for name in fields}
            targets = [
                (
                    chunk_keys(
                        record.id,
                        snapshot.write_id,
                        (name,),
                        chunk_count(record),
                        spread=record.spread,
                    ),
                    vector,
                )
                for name, vector in vectors.items()
            ]
        # A partial step's gradient holds its segments only.
        stored = [stored_gradient(entry) for entry in entries]
        for entry, parts in zip(entries, stored, strict=True):
            targets += logged_targets(record, entry, parts)
        if not await self._chunks.read_into(record, targets):
            return WriteStatus.CONFLICT
        log = [(entry, widened(parts)) for entry, parts in zip(entries, stored, strict=True)]
        return StoredSession(record, config, vectors, int(snapshot_t), log, segment_steps)

    async def history(self, session_id: str, *, after_t: int | None, limit: int) -> list[bytes]:
        """Up to ``limit`` history points (JSON), oldest first: those after step
        ``after_t``, or the newest when it is None."""
        return await newest_or_after(
            self._redis, history_key(session_id), after=after_t, limit=limit
        )

    async def read_idempotency(self, session_id: str, key: str) -> IdempotencyRecord | None:
        """The idempotency record of ``key``, if any."""
        async with unavailable_on_error():
            raw = await self._redis.get(idempotency_key(session_id, key))
        return None if raw is None else IdempotencyRecord.decode(text(raw))

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

    async def grow(
        self, current: SessionRecord, new: SessionRecord, state: AdamState
    ) -> WriteOutcome:
        """Make ``state`` (of ``new.size``, at the session's t) its one snapshot, and
        ``new`` its record, if it is still at ``current.rev`` (``lua/grow.lua``)."""
        ref = SnapshotRef(new.head, "".join(vectors_of(state)), new.optimizer, state.segment_steps)
        chunks = self._state_chunks(new, ref.write_id, state)
        changes = record_changes(
            size=new.size,
            optimizer=new.optimizer,
            head=new.head,
            updated_at=new.updated_at,
            grown_from=new.grown_from,
        )
        args: list[Any] = [current.rev, ref.encode(), *_pairs(changes)]
        reply = await self._chunks.write_then_run(
            self._grow, [meta_key(new.id)], chunks, args, spread=new.spread
        )
        return _outcome(reply)

    async def update_record(self, current: SessionRecord, changes: MetaFields) -> WriteOutcome:
        """Set fields of the record if the session is still at ``current.rev``."""
        args: list[Any] = [current.rev, "", *_pairs(changes)]
        async with unavailable_on_error(write=True):
            reply = await self._chunks.acks.run(
                self._redis, self._commit, [meta_key(current.id)], args
            )
        return _outcome(reply)

    async def _commit_snapshot(
        self,
        record: SessionRecord,
        *,
        expected_rev: int | None,
        state: AdamState,
        changes: MetaFields,
    ) -> WriteOutcome:
        ref = SnapshotRef(
            record.head, "".join(vectors_of(state)), record.optimizer, state.segment_steps
        )
        chunks = self._state_chunks(record, ref.write_id, state)
        args: list[Any] = [
            "" if expected_rev is None else expected_rev,
            ref.encode(),
            *_pairs(changes),
        ]
        reply = await self._chunks.write_then_run(
            self._commit, [meta_key(record.id)], chunks, args, spread=record.spread
        )
        return _outcome(reply)

    async def append(
        self,
        current: SessionRecord,
        new: SessionRecord,
        steps: Sequence[LoggedStep],
        *,
        idempotency_ttl_ms: int,
        round_entries: Sequence[str] | None = None,
        staged: StagedChunks | None = None,
    ) -> AppendOutcome:
        """Log ``steps`` (the steps after ``current.t``, in order) and make ``new`` the
        record, if the session is still at ``current.rev``: one compare-and-set for all.
        ``staged``: the one step's chunks, written by ``stage_log``.

        With ``round_entries``, the one step is the close of the open round, which must
        still hold exactly those contributions (write ids, in order; else ``CONFLICT``);
        it is dropped.
        A step's idempotency key that is recorded already refuses the whole group as
        ``REPLAYED`` with that step's index. Store failures are as in ``_write_then_run``.
        """
        meta = meta_key(current.id)
        idem_keys = [
            meta if step.idempotency is None else idempotency_key(current.id, step.idempotency.key)
            for step in steps
        ]
        assert staged is None or len(steps) == 1, "a staged gradient is a group's only step"
        chunks: list[Chunk] = []
        for step in steps if staged is None else ():
            chunks += logged_chunks(current, step.entry, step.gradient)
        args: list[Any] = [
            current.rev,
            len(steps),
            current.t,
            idempotency_ttl_ms,
            sum(step.entry.nbytes for step in steps),
            "" if round_entries is None else " ".join(round_entries),
            *(step.entry.encode() for step in steps),
            *(step.idempotency.record.encode() if step.idempotency else "" for step in steps),
            *(step.point or "" for step in steps),
            *_pairs(record_changes(**_step_changes(current, new))),
        ]
        reply = await self._chunks.write_then_run(
            self._append,
            [meta, idempotency_index_key(current.id), *idem_keys],
            chunks,
            args,
            spread=current.spread,
            staged=staged,
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

    def stage_log(self, record: SessionRecord, step: LoggedStep) -> StagedChunks:
        """Start writing the chunks of ``step``'s gradient for an ``append`` to come."""
        chunks = logged_chunks(record, step.entry, step.gradient)
        return self._chunks.stage(record.id, chunks, spread=record.spread)

    async def snapshot(
        self, record: SessionRecord, entry: LogEntry, state: AdamState, config: AdamConfig
    ) -> tuple[WriteStatus, int]:
        """Make ``state`` (the state right after the logged ``entry`` of step
        ``state.step``) the session's newest snapshot; the status and, when committed, the
        bytes logged since. Does not change the session's rev."""
        ref = SnapshotRef(new_write_id(), "".join(vectors_of(state)), config, state.segment_steps)
        chunks = self._state_chunks(record, ref.write_id, state)
        args = [state.step, entry.encode(), ref.encode()]
        reply = await self._chunks.write_then_run(
            self._snapshot, [meta_key(record.id)], chunks, args, spread=record.spread
        )
        status = WriteStatus(int(reply[0]))
        return status, int(reply[1]) if status is WriteStatus.COMMITTED else 0

    async def rollback(self, current: SessionRecord, k: int, changes: MetaFields) -> WriteOutcome:
        """Return the session to the state right after step ``k``, if it is still at
        ``current.rev`` and the store keeps what that needs (else ``NO_HISTORY``)."""
        args: list[Any] = [current.rev, k, *_pairs(changes)]
        async with unavailable_on_error(write=True):
            reply = await self._chunks.acks.run(
                self._redis, self._rollback, [meta_key(current.id)], args
            )
        status = WriteStatus(int(reply[0]))
        if status is WriteStatus.NO_HISTORY:
            return WriteOutcome(status, oldest_t=int(reply[1]))
        await self._collect(current)
        return _outcome(reply)

    async def delete(self, record: SessionRecord) -> WriteStatus:
        """Delete the session if it is still at ``record.rev``, with its snapshots, log and
        idempotency records (its tenant's index and quota are another slot's: the domain
        releases them next)."""
        keys = [meta_key(record.id), idempotency_index_key(record.id)]
        async with unavailable_on_error(write=True):
            reply = await self._chunks.acks.run(self._redis, self._delete, keys, [record.rev])
        await self._collect(record)
        return WriteStatus(int(reply[0]))

    async def _collect(self, record: SessionRecord) -> None:
        """Delete the chunks a script just retired, when the session's are spread (else
        the script did); a failure leaves them to the next sweep."""
        if record.spread:
            with contextlib.suppress(StoreUnavailable):
                await self._chunks.garbage.collect(record.id)

    def _state_chunks(self, record: SessionRecord, write_id: str, state: AdamState) -> list[Chunk]:
        chunks: list[Chunk] = []
        for name, vector in vectors_of(state).items():
            keys = chunk_keys(
                record.id, write_id, (name,), chunk_count(record), spread=record.spread
            )
            chunks += chunked(keys, vector, record.chunk_elements)
        return chunks


def _step_changes(current: SessionRecord, new: SessionRecord) -> dict[str, Any]:
    """The record fields a group of steps changes: t, head, the time, and the optimizer
    when a step carried new settings."""
    changes: dict[str, Any] = {"t": new.t, "head": new.head, "updated_at": new.updated_at}
    if new.optimizer != current.optimizer:
        changes["optimizer"] = new.optimizer
    return changes


def _pairs(changes: MetaFields) -> list[Any]:
    return [part for field, value in changes.items() for part in (field, value)]


def logged_chunks(record: SessionRecord, entry: LogEntry, logged: LoggedGradient) -> list[Chunk]:
    """The chunks of a logged gradient: its values (``g``), and the scales (``s``) of
    one in 8-bit blocks."""
    keys = chunk_keys(
        record.id, entry.write_id, (GRADIENT,), chunks_of(record, entry), spread=record.spread
    )
    if not isinstance(logged, Int8Blocks):
        return chunked(keys, logged, record.chunk_elements)
    scale_keys = chunk_keys(
        record.id,
        entry.write_id,
        (SCALES,),
        -(-logged.scales.size // record.chunk_elements),
        spread=record.spread,
    )
    return chunked(keys, logged.values, record.chunk_elements) + chunked(
        scale_keys, logged.scales, record.chunk_elements
    )


def stored_gradient(entry: LogEntry) -> list[npt.NDArray[Any]]:
    """Arrays to read a logged gradient into: its values, and its scales when 8-bit."""
    if entry.dtype != INT8_BLOCKS:
        return [np.empty(entry.elements, dtype=entry.dtype)]
    return [np.empty(entry.elements, np.int8), np.empty(blocks_of(entry.elements), np.float32)]


def logged_targets(
    record: SessionRecord, entry: LogEntry, parts: list[npt.NDArray[Any]]
) -> list[tuple[Sequence[str], Any]]:
    """Where each part of a logged gradient is read from."""
    names = (GRADIENT, SCALES)
    return [
        (
            chunk_keys(
                record.id,
                entry.write_id,
                (name,),
                -(-part.size // record.chunk_elements),
                spread=record.spread,
            ),
            part,
        )
        for name, part in zip(names, parts, strict=False)
    ]


def widened(parts: list[npt.NDArray[Any]]) -> FloatArray:
    """A logged gradient as the step applied it: 8-bit blocks dequantized, else as read
    (its dtype widens exactly)."""
    if len(parts) == 1:
        read: FloatArray = parts[0]
        return read
    return Int8Blocks(parts[0], parts[1]).dequantized()
