"""The version protocol: sessions read through this process's cache, written by
compare-and-set on ``rev``, retried when another writer wins.

The cache holds the newest state this process has seen of each session; it is only a
hint, because every write is fenced by the store. A write that loses re-reads and tries
again, up to ``commit_attempts`` times (``until_committed``). A state that is not
cached is rebuilt from the newest snapshot and the log after it, with the code that
steps (``optim.adam_step``), so it is the state that was acknowledged, bit for bit.
Snapshots are written here, after a commit and off the step's path, when the log since
the last one passes ``snapshot_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import numpy as np

from adamhub_service import errors
from adamhub_service.model.log import LogEntry
from adamhub_service.model.outcomes import (
    AppendOutcome,
    IdempotencyRecord,
    WriteOutcome,
    WriteStatus,
)
from adamhub_service.model.records import SessionRecord, is_session_id
from adamhub_service.model.repositories import StagedWrite
from adamhub_service.model.settings import SessionSettings
from adamhub_service.model.stored import CachedSession, LoggedStep, StoredSession, Wake
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import AdamConfig, AdamState, FloatArray, adam_step
from adamhub_service.storage.cache import StateCache
from adamhub_service.storage.chunks import StagedChunks
from adamhub_service.storage.encoding import record_changes, settings_fields, state_of
from adamhub_service.storage.notifier import StepNotifier, Watch
from adamhub_service.storage.session_scripts import SessionScripts

_BACKOFF_BASE_SECONDS = 0.002
_BACKOFF_CAP_SECONDS = 0.05
# Rebuilding a state of this many elements or more runs in a worker thread.
_THREAD_ELEMENTS = 1 << 16
# The default snapshot interval, in bytes of logged gradients per byte of one state
# vector: a snapshot of θ, m, v (and max v) then adds 3/8 (4/8) of a gradient's bytes
# to each step, Redis holds at most 8 float32 gradients beside the snapshot, and a
# replica without the state replays at most 8 of them. Small sessions snapshot after
# SNAPSHOT_MIN_BYTES: their fixed per-step costs (keys, record fields) weigh more.
SNAPSHOT_MULTIPLE = 8
SNAPSHOT_MIN_BYTES = 64 << 10

T = TypeVar("T")
logger = logging.getLogger("adamhub.storage")


def snapshot_threshold(record: SessionRecord, snapshot_bytes: int | None) -> int:
    """The logged bytes after which a session gets a new snapshot."""
    if snapshot_bytes is not None:
        return snapshot_bytes
    vector_bytes = record.size * np.dtype(record.dtype).itemsize
    return max(SNAPSHOT_MULTIPLE * vector_bytes, SNAPSHOT_MIN_BYTES)


def replay(
    state: AdamState, config: AdamConfig, log: Sequence[tuple[LogEntry, FloatArray]]
) -> tuple[AdamState, AdamConfig]:
    """The state (and the config of its step) after applying logged steps to ``state``."""
    for entry, gradient in log:
        if entry.config is not None:
            config = entry.config
        state = adam_step(state, gradient.astype(state.dtype, copy=False), config, entry.segments)
    return state, config


class RedisSessionRepository:
    """Sessions' records and states: the session scripts behind this process's cache."""

    def __init__(
        self,
        store: SessionScripts,
        cache: StateCache,
        notifier: StepNotifier,
        *,
        commit_attempts: int,
        snapshot_bytes: int | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._cache = cache
        self._commit_attempts = commit_attempts
        self._snapshot_bytes = snapshot_bytes
        self._snapshots: dict[str, asyncio.Task[None]] = {}
        self._notifier = notifier

    @property
    def cached_bytes(self) -> int:
        """Bytes of state held by the cache."""
        return self._cache.nbytes

    async def close(self) -> None:
        """Wait for the snapshots being written (they are only an optimisation: a
        snapshot cut short leaves chunks that expire)."""
        await self._notifier.close()
        tasks = list(self._snapshots.values())
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()

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
        status = await self._store.create(record, state)
        if status is WriteStatus.COMMITTED:
            self._cache.put(CachedSession(record, state, record.optimizer))
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

    async def load(self, session_id: str) -> CachedSession:
        """The session's state: the cached one (unverified), else the stored one."""
        entry = self._cache.get(session_id)
        if entry is not None:
            return entry
        return await self.until_committed(lambda: self._rebuild(session_id))

    async def _rebuild(self, session_id: str) -> CachedSession | None:
        """The stored state: the newest snapshot with the log after it replayed."""
        if not is_session_id(session_id):
            raise errors.SessionNotFound(session_id)
        # A state of this process at an older step of the same history is caught up
        # with the log after it (the same replay, so the same bits), not rebuilt.
        held = self._cache.get(session_id)
        since = None if held is None else (held.state.step, held.record.head)
        stored = await self._store.load(session_id, since=since)
        if stored is WriteStatus.GONE:
            self._cache.drop(session_id)
            raise errors.SessionNotFound(session_id)
        if not isinstance(stored, StoredSession):
            return None  # a snapshot or the log changed while it was read
        start = held if not stored.snapshot else None
        if stored.record.size * (1 + len(stored.log)) >= _THREAD_ELEMENTS:
            rebuilt = await asyncio.to_thread(_replayed, stored, start)
        else:
            rebuilt = _replayed(stored, start)
        self._cache.put(rebuilt)
        return rebuilt

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
            current = await self._current(record)
            return None if current is None else (current.record, current.state.params)

        return await self.until_committed(attempt)

    async def params_of(self, record: SessionRecord) -> tuple[SessionRecord, FloatArray]:
        """The parameters of ``record``'s version, just read: from the cache when it holds
        that version (no store call), else as ``params`` reads them."""
        current = await self._current(record)
        if current is not None:
            return current.record, current.state.params
        newest, params = await self.params(record.id)
        assert params is not None, "params are read unless an ETag matched"
        return newest, params

    async def state(self, session_id: str) -> CachedSession:
        """The current state, verified against the store (one step's, never a mix)."""

        async def attempt() -> CachedSession | None:
            return await self._current(await self.record(session_id))

        return await self.until_committed(attempt)

    async def _current(self, record: SessionRecord) -> CachedSession | None:
        """The state of ``record``'s version: the cached one when it is that version,
        else rebuilt (None when a concurrent change retired what was read)."""
        entry = self._cache.get(record.id)
        if entry is not None and entry.record.rev == record.rev:
            return entry
        return await self._rebuild(record.id)

    async def history(self, session_id: str, *, after_t: int | None, limit: int) -> list[bytes]:
        """Up to ``limit`` history points (JSON), oldest first: those after step
        ``after_t``, or the newest when it is None."""
        return await self._store.history(session_id, after_t=after_t, limit=limit)

    async def read_records(self, session_ids: Sequence[str]) -> list[SessionRecord | None]:
        """The records of several sessions, read fresh (None for those that are gone)."""
        return await self._store.read_records(session_ids)

    async def read_idempotency(self, session_id: str, key: str) -> IdempotencyRecord | None:
        """What ``key`` produced on this session, if it is recorded."""
        return await self._store.read_idempotency(session_id, key)

    async def append(
        self,
        current: CachedSession,
        new: SessionRecord,
        steps: Sequence[LoggedStep],
        result: CachedSession,
        *,
        idempotency_ttl_ms: int,
        round_entries: Sequence[str] | None = None,
        staged: StagedWrite | None = None,
    ) -> AppendOutcome:
        """Log ``steps``, computed from ``current``, if nothing moved; ``result`` is the
        state they lead to (and ``new`` its record); ``staged``: the one step's
        gradient, written by ``stage_log``.

        On success the cache holds ``result``, and a snapshot of it is started when
        the log has grown past the threshold; otherwise the store has deleted the
        written chunks, and the cache forgets the session unless the group was refused
        as an idempotent replay (which leaves the session as it was).
        """
        outcome = await self._store.append(
            current.record,
            new,
            steps,
            idempotency_ttl_ms=idempotency_ttl_ms,
            round_entries=round_entries,
            staged=_staged_chunks(staged),
        )
        if outcome.status is WriteStatus.COMMITTED:
            assert outcome.rev is not None
            committed = CachedSession(
                new.evolve(rev=outcome.rev), result.state, result.config, outcome.log_bytes
            )
            self._cache.put(committed)
            # This process's waiters need not wait for the store's notification.
            self._notifier.changed(new.id, committed.record)
            if outcome.log_bytes >= snapshot_threshold(new, self._snapshot_bytes):
                self._start_snapshot(committed, steps[-1].entry)
        elif outcome.status is not WriteStatus.REPLAYED:
            self._cache.drop(current.record.id)
        return outcome

    def stage_log(self, record: SessionRecord, step: LoggedStep) -> StagedChunks:
        """Start writing ``step``'s logged gradient for an ``append`` to come."""
        return self._store.stage_log(record, step)

    async def notified(self, session_id: str, seconds: float) -> Wake:
        """Return when the session may have a new t (with the record, when this
        process's commit made it), or after ``seconds`` (at most a second) without news."""
        return await self._notifier.wait(session_id, seconds)

    def watch(self, session_id: str) -> Watch:
        """The session's news for a caller that waits more than once (see ``Watch``)."""
        return self._notifier.watch(session_id)

    def _start_snapshot(self, committed: CachedSession, entry: LogEntry) -> None:
        session_id = committed.record.id
        running = self._snapshots.get(session_id)
        if running is not None and not running.done():
            return
        task = asyncio.create_task(self._write_snapshot(committed, entry))
        self._snapshots[session_id] = task
        task.add_done_callback(lambda done: self._forget_snapshot(session_id, done))

    def _forget_snapshot(self, session_id: str, task: asyncio.Task[None]) -> None:
        if self._snapshots.get(session_id) is task:
            del self._snapshots[session_id]

    async def _write_snapshot(self, committed: CachedSession, entry: LogEntry) -> None:
        try:
            status, log_bytes = await self._store.snapshot(
                committed.record, entry, committed.state, committed.config
            )
        except (errors.StoreUnavailable, errors.OutcomeUnknown) as exc:
            if self._metrics is not None:
                self._metrics.snapshots.labels("failed").inc()
            # The next commit tries again; the log keeps every step meanwhile.
            logger.warning(
                "snapshot of %s at t=%d not written: %s",
                committed.record.id,
                committed.state.step,
                exc,
            )
            return
        if self._metrics is not None:
            committed_now = status is WriteStatus.COMMITTED
            self._metrics.snapshots.labels("committed" if committed_now else "superseded").inc()
        if status is WriteStatus.COMMITTED:
            entry_now = self._cache.get(committed.record.id)
            if entry_now is not None and entry_now.record.rev == committed.record.rev:
                self._cache.put(
                    CachedSession(entry_now.record, entry_now.state, entry_now.config, log_bytes)
                )

    async def reset(
        self, current: SessionRecord, new: SessionRecord, state: AdamState
    ) -> WriteOutcome:
        """Start the session over from ``state`` (step 0) if nothing moved."""
        outcome = await self._store.reset(current, new, state)
        if outcome.status is WriteStatus.COMMITTED:
            self._cache.put(CachedSession(new.evolve(rev=outcome.rev), state, new.optimizer))
        else:
            self._cache.drop(current.id)
        return outcome

    async def grow(
        self, current: SessionRecord, new: SessionRecord, state: AdamState
    ) -> WriteOutcome:
        """Grow the session to ``new`` (its size, groups, segments) with ``state`` if
        nothing moved."""
        outcome = await self._store.grow(current, new, state)
        if outcome.status is WriteStatus.COMMITTED:
            self._cache.put(CachedSession(new.evolve(rev=outcome.rev), state, new.optimizer))
        else:
            self._cache.drop(current.id)
        return outcome

    async def commit_record(self, current: SessionRecord, new: SessionRecord) -> WriteOutcome:
        """Change the record's settings (not its vectors) if nothing moved."""
        changes = record_changes(updated_at=new.updated_at)
        if new.optimizer != current.optimizer:
            changes.update(record_changes(optimizer=new.optimizer))
        changed = [
            name
            for name in SessionSettings.names()
            if getattr(new.settings, name) != getattr(current.settings, name)
        ]
        if changed:
            changes.update(settings_fields(new.settings, changed))
        outcome = await self._store.update_record(current, changes)
        entry = self._cache.get(current.id)
        if (
            outcome.status is WriteStatus.COMMITTED
            and entry is not None
            and entry.record.rev == current.rev
        ):
            self._cache.put(
                CachedSession(
                    new.evolve(rev=outcome.rev), entry.state, entry.config, entry.log_bytes
                )
            )
        else:
            self._cache.drop(current.id)
        return outcome

    async def rollback(self, current: SessionRecord, new: SessionRecord) -> WriteOutcome:
        """Return the session to step ``new.t`` if nothing moved and it is kept."""
        outcome = await self._store.rollback(
            current, new.t, record_changes(head=new.head, updated_at=new.updated_at)
        )
        self._cache.drop(current.id)
        return outcome

    async def delete(self, current: SessionRecord) -> WriteStatus:
        """Delete the session if it is still at ``current.rev``."""
        status = await self._store.delete(current)
        if status is not WriteStatus.CONFLICT:
            self._cache.drop(current.id)
        return status


def _replayed(stored: StoredSession, start: CachedSession | None = None) -> CachedSession:
    """The state ``stored`` leads to: from its snapshot, or from ``start`` (a state at
    its ``snapshot_t`` when it holds no snapshot)."""
    logged = sum(entry.nbytes for entry, _ in stored.log)
    if start is not None:
        state, config = replay(start.state, start.config, stored.log)
        return CachedSession(stored.record, state, config, start.log_bytes + logged)
    state = state_of(stored.snapshot, stored.snapshot_t, stored.snapshot_segment_steps)
    state, config = replay(state, stored.snapshot_config, stored.log)
    return CachedSession(stored.record, state, config, logged)


def _staged_chunks(staged: StagedWrite | None) -> StagedChunks | None:
    """A staged write as this store made it."""
    assert staged is None or isinstance(staged, StagedChunks), "staged by this store"
    return staged
