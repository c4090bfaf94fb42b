"""Sessions: creating, reading, changing and deleting them, over the store and the cache.

Every change is a compare-and-set on the session's ``rev``; a change that loses the race
re-reads and tries again, up to ``Settings.commit_attempts`` times.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from adamhub_service import errors
from adamhub_service.cache import CachedSession, StateCache
from adamhub_service.optim import AdamConfig, AdamState, FloatArray, init_state
from adamhub_service.records import (
    EXP_AVG,
    EXP_AVG_SQ,
    MAX_EXP_AVG_SQ,
    PARAMS,
    SessionRecord,
    is_session_id,
    new_session_id,
    new_write_id,
    utc_now,
)
from adamhub_service.settings import Settings
from adamhub_service.store import CommitOutcome, RedisStore, chunk_keys, record_changes

_BACKOFF_BASE_SECONDS = 0.002
_BACKOFF_CAP_SECONDS = 0.05


def vectors_of(state: AdamState) -> dict[str, FloatArray]:
    """The stored vectors of a state, by stored name."""
    vectors = {PARAMS: state.params, EXP_AVG: state.exp_avg, EXP_AVG_SQ: state.exp_avg_sq}
    if state.max_exp_avg_sq is not None:
        vectors[MAX_EXP_AVG_SQ] = state.max_exp_avg_sq
    return vectors


def state_of(vectors: Mapping[str, FloatArray], step: int) -> AdamState:
    """The state made of stored vectors."""
    return AdamState(
        params=vectors[PARAMS],
        exp_avg=vectors[EXP_AVG],
        exp_avg_sq=vectors[EXP_AVG_SQ],
        max_exp_avg_sq=vectors.get(MAX_EXP_AVG_SQ),
        step=step,
    )


@dataclass(frozen=True, slots=True)
class NewSession:
    """A validated request for a session."""

    params: FloatArray
    optimizer: AdamConfig
    name: str | None
    metadata: dict[str, Any]


def initial_params(
    size: int, dtype: str, *, mean: float = 0.0, std: float = 0.0, seed: int | None = None
) -> FloatArray:
    """Parameters drawn from N(mean, std²) by numpy's default generator (zeros for std 0)."""
    if std == 0:
        return np.full(size, mean, dtype=dtype)
    generator = np.random.default_rng(seed)
    return generator.normal(mean, std, size).astype(dtype)


async def attempts(count: int) -> AsyncIterator[int]:
    """Yield attempt numbers, backing off with full jitter between them.

    When every attempt is used, raise ``StepConflict`` (409 with Retry-After).
    """
    for attempt in range(count):
        if attempt:
            ceiling = min(_BACKOFF_CAP_SECONDS, _BACKOFF_BASE_SECONDS * 2**attempt)
            await asyncio.sleep(random.uniform(0, ceiling))
        yield attempt
    raise errors.StepConflict(
        f"the session kept changing under {count} attempts; try again",
        headers={"Retry-After": "1"},
    )


class SessionService:
    """Sessions as the routes see them."""

    def __init__(self, store: RedisStore, cache: StateCache, settings: Settings) -> None:
        self.store = store
        self.cache = cache
        self.settings = settings

    async def create(self, spec: NewSession) -> SessionRecord:
        """Store a new session at step 0 and return its record."""
        now = utc_now()
        record = SessionRecord(
            id=new_session_id(),
            size=int(spec.params.size),
            dtype=str(spec.params.dtype),
            chunk_elements=self.settings.chunk_elements,
            optimizer=spec.optimizer,
            t=0,
            rev=1,
            head=new_write_id(),
            created_at=now,
            updated_at=now,
            name=spec.name,
            metadata=spec.metadata,
        )
        state = init_state(spec.params, spec.optimizer)
        await self.store.create(record, vectors_of(state))
        self.cache.put(CachedSession(record, state))
        return record

    async def record(self, session_id: str, *, fresh: bool = True) -> SessionRecord:
        """The session's record: from the store, or from the cache when not ``fresh``.

        A cached record may be behind on ``t`` and settings but never on ``size`` or
        ``dtype``, which do not change.
        """
        if not is_session_id(session_id):
            raise errors.SessionNotFound(session_id)
        if not fresh and (entry := self.cache.get(session_id)) is not None:
            return entry.record
        record = await self.store.read_record(session_id)
        if record is None:
            self.cache.drop(session_id)
            raise errors.SessionNotFound(session_id)
        return record

    async def load(self, session_id: str) -> CachedSession:
        """The session's state: the cached one (unverified), else the stored one."""
        if not is_session_id(session_id):
            raise errors.SessionNotFound(session_id)
        entry = self.cache.get(session_id)
        if entry is not None:
            return entry
        async for _ in attempts(self.settings.commit_attempts):
            record = await self.record(session_id)
            vectors = await self.store.read_vectors(record, record.fields)
            if vectors is not None:
                entry = CachedSession(record, state_of(vectors, record.t))
                self.cache.put(entry)
                return entry
        raise AssertionError("unreachable: attempts() raises when exhausted")

    async def params(
        self, session_id: str, *, unless_heads: frozenset[str] = frozenset()
    ) -> tuple[SessionRecord, FloatArray | None]:
        """The current record and parameters, verified against the store.

        The parameters are None, and not read, when the head is one of ``unless_heads``
        (``"*"`` matches any).
        """
        async for _ in attempts(self.settings.commit_attempts):
            record = await self.record(session_id)
            if record.head in unless_heads or "*" in unless_heads:
                return record, None
            entry = self.cache.get(session_id)
            if entry is not None and entry.record.rev == record.rev:
                return record, entry.state.params
            vectors = await self.store.read_vectors(record, (PARAMS,))
            if vectors is not None:
                return record, vectors[PARAMS]
        raise AssertionError("unreachable: attempts() raises when exhausted")

    async def list(
        self, *, after: str | None, limit: int
    ) -> tuple[list[SessionRecord], str | None]:
        """A page of sessions in creation order and the cursor of the next page."""
        ids = await self.store.list_ids(after=after, limit=limit)
        records = [r for r in await self.store.read_records(ids) if r is not None]
        return records, (ids[-1] if len(ids) == limit else None)

    async def update(
        self,
        session_id: str,
        *,
        optimizer: Mapping[str, Any] | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        fields_set: frozenset[str] = frozenset(),
    ) -> SessionRecord:
        """Change settings, name or metadata; the vectors and ``t`` stay."""
        async for _ in attempts(self.settings.commit_attempts):
            current = await self.record(session_id)
            changes: dict[str, Any] = {"updated_at": utc_now()}
            if optimizer:
                merged = {**asdict(current.optimizer), **optimizer}
                if merged["amsgrad"] != current.optimizer.amsgrad:
                    raise errors.InvalidHyperparameters(
                        "amsgrad is fixed when a session is created (it decides which "
                        "moments are kept); create a new session to change it",
                        errors=[{"loc": ["optimizer", "amsgrad"], "msg": "cannot change"}],
                    )
                changes["optimizer"] = _config(merged)
            if "name" in fields_set:
                changes["name"] = name
            if "metadata" in fields_set:
                changes["metadata"] = metadata if metadata is not None else {}
            outcome = await self.store.commit(
                session_id, expected_rev=current.rev, changes=record_changes(**changes)
            )
            if outcome.gone:
                raise errors.SessionNotFound(session_id)
            if outcome.committed_rev is not None:
                updated = current.evolve(rev=outcome.committed_rev, **changes)
                entry = self.cache.get(session_id)
                if entry is not None and entry.record.rev == current.rev:
                    self.cache.put(CachedSession(updated, entry.state))
                else:
                    self.cache.drop(session_id)
                return updated
            self.cache.drop(session_id)
        raise AssertionError("unreachable: attempts() raises when exhausted")

    async def replace_params(self, session_id: str, params: FloatArray) -> SessionRecord:
        """Start the optimisation over from ``params``: zero moments, ``t`` = 0."""
        async for _ in attempts(self.settings.commit_attempts):
            current = await self.record(session_id)
            state = init_state(params.astype(current.dtype, copy=False), current.optimizer)
            new = current.evolve(t=0, head=new_write_id(), updated_at=utc_now())
            outcome = await self.commit_version(current, new, state)
            if outcome.gone:
                raise errors.SessionNotFound(session_id)
            if outcome.committed_rev is not None:
                return new.evolve(rev=outcome.committed_rev)
        raise AssertionError("unreachable: attempts() raises when exhausted")

    async def delete(self, session_id: str) -> None:
        """Delete the session and all its state."""
        async for _ in attempts(self.settings.commit_attempts):
            current = await self.record(session_id)
            done = await self.store.delete(current)
            if done is not False:
                self.cache.drop(session_id)
                if done is None:
                    raise errors.SessionNotFound(session_id)
                return

    async def commit_version(
        self,
        current: SessionRecord,
        new: SessionRecord,
        state: AdamState,
        *,
        idempotency: tuple[str, str, int] | None = None,
    ) -> CommitOutcome:
        """Write ``state`` as version ``new.head`` and make it current if nothing moved.

        On success the cache holds the new version; otherwise the store has deleted
        the written chunks, and the cache forgets the session unless the commit was
        refused as an idempotent replay (which leaves the current version as it was).
        """
        outcome = await self.store.commit(
            current.id,
            expected_rev=current.rev,
            new_version=(new, vectors_of(state)),
            old_keys=chunk_keys(current, current.head, current.fields),
            changes=record_changes(t=new.t, head=new.head, updated_at=new.updated_at),
            idempotency=idempotency,
        )
        if outcome.committed_rev is not None:
            self.cache.put(CachedSession(new.evolve(rev=outcome.committed_rev), state))
        elif outcome.replay_record is None:  # a replay changed nothing: the cache holds
            self.cache.drop(current.id)
        return outcome


def _config(values: Mapping[str, Any]) -> AdamConfig:
    try:
        return AdamConfig(**values)
    except ValueError as exc:
        raise errors.InvalidHyperparameters(str(exc)) from exc
