"""Sessions: creating, reading, changing and deleting them.

Every change is a compare-and-set on the session's ``rev`` through the
``SessionStore``; a change that loses the race re-reads and tries again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adamhub_service import errors
from adamhub_service.optim import AdamConfig, FloatArray, init_state
from adamhub_service.sessions.records import (
    SessionRecord,
    is_session_id,
    new_session_id,
    new_write_id,
    utc_now,
)
from adamhub_service.storage.outcomes import WriteStatus
from adamhub_service.storage.versions import SessionStore


@dataclass(frozen=True, slots=True)
class NormalInitSpec:
    """Initial parameters drawn from N(mean, std²) by numpy's default generator."""

    mean: float = 0.0
    std: float = 1.0
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class NewSession:
    """A request for a session: initial ``params``, or a ``size`` (zeros, or ``init``)."""

    dtype: str
    optimizer: AdamConfig
    params: FloatArray | None = None
    size: int | None = None
    init: NormalInitSpec | None = None
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionChanges:
    """What a PATCH changes; ``None`` leaves a field as it is (``metadata={}`` clears it)."""

    optimizer: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    rename: bool = False
    metadata: dict[str, Any] | None = None


def initial_params(size: int, dtype: str, init: NormalInitSpec | None) -> FloatArray:
    """``size`` parameters: zeros, or drawn as ``init`` says; 422 when not finite in ``dtype``."""
    if init is None or init.std == 0:
        mean = 0.0 if init is None else init.mean
        with np.errstate(over="ignore"):
            params = np.full(size, mean, dtype=dtype)
    else:
        generator = np.random.default_rng(init.seed)
        with np.errstate(over="ignore"):
            params = generator.normal(init.mean, init.std, size).astype(dtype)
    if not np.isfinite(params).all():
        raise errors.ValidationFailed(
            f"init draws values that are not finite in {dtype}; use a smaller mean or std",
            errors=[{"loc": ["init"], "msg": f"not finite in {dtype}"}],
        )
    return params


class SessionService:
    """Sessions as the API sees them."""

    def __init__(self, store: SessionStore, *, chunk_elements: int, max_size: int) -> None:
        self._store = store
        self._chunk_elements = chunk_elements
        self._max_size = max_size

    async def create(self, spec: NewSession) -> SessionRecord:
        """Store a new session at step 0 and return its record."""
        size = spec.size if spec.params is None else int(spec.params.size)
        assert size is not None, "a NewSession has params or a size"
        if size > self._max_size:
            raise errors.ValidationFailed(
                f"{size} parameters are over this service's maximum of {self._max_size}",
                max_size=self._max_size,
                errors=[{"loc": ["size"], "msg": f"at most {self._max_size}"}],
            )
        params = (
            spec.params if spec.params is not None else initial_params(size, spec.dtype, spec.init)
        )
        now = utc_now()
        record = SessionRecord(
            id=new_session_id(),
            size=size,
            dtype=spec.dtype,
            chunk_elements=self._chunk_elements,
            optimizer=spec.optimizer,
            t=0,
            rev=1,
            head=new_write_id(),
            created_at=now,
            updated_at=now,
            name=spec.name,
            metadata=spec.metadata,
        )
        await self._store.create(record, init_state(params, spec.optimizer))
        return record

    async def get(self, session_id: str, *, fresh: bool = True) -> SessionRecord:
        """The session's record (a cached one when not ``fresh``; see ``SessionStore``)."""
        return await self._store.record(session_id, fresh=fresh)

    async def list(
        self, *, after: str | None, limit: int
    ) -> tuple[list[SessionRecord], str | None]:
        """A page of sessions in creation order and the cursor of the next page."""
        if after is not None and not is_session_id(after):
            raise errors.ValidationFailed(
                f"cursor {after!r} is not a session id",
                errors=[{"loc": ["query", "cursor"], "msg": "not a session id"}],
            )
        records, more = await self._store.records(after=after, limit=limit)
        return records, (records[-1].id if more and records else None)

    async def params(
        self, session_id: str, *, unless_heads: frozenset[str] = frozenset()
    ) -> tuple[SessionRecord, FloatArray | None]:
        """The current record and parameters (None when the head is in ``unless_heads``)."""
        return await self._store.params(session_id, unless_heads=unless_heads)

    async def update(self, session_id: str, changes: SessionChanges) -> SessionRecord:
        """Change settings, name or metadata; the vectors and ``t`` stay."""

        async def attempt() -> SessionRecord | None:
            current = await self._store.record(session_id)
            new = current.evolve(updated_at=utc_now())
            if changes.optimizer:
                try:
                    new = new.evolve(optimizer=current.optimizer.evolve(**changes.optimizer))
                except ValueError as exc:  # a bound of optim; the API checks them first
                    raise errors.ValidationFailed(str(exc)) from exc
            if changes.rename:
                new = new.evolve(name=changes.name)
            if changes.metadata is not None:
                new = new.evolve(metadata=changes.metadata)
            outcome = await self._store.commit_record(current, new)
            if outcome.status is WriteStatus.GONE:
                raise errors.SessionNotFound(session_id)
            return new.evolve(rev=outcome.rev) if outcome.status is WriteStatus.COMMITTED else None

        return await self._store.until_committed(attempt)

    async def replace_params(self, session_id: str, params: FloatArray) -> SessionRecord:
        """Start the optimisation over from ``params``: zero moments, ``t`` = 0."""

        async def attempt() -> SessionRecord | None:
            current = await self._store.record(session_id)
            state = init_state(params.astype(current.dtype, copy=False), current.optimizer)
            new = current.evolve(t=0, head=new_write_id(), updated_at=utc_now())
            outcome = await self._store.commit_state(current, new, state)
            if outcome.status is WriteStatus.GONE:
                raise errors.SessionNotFound(session_id)
            return new.evolve(rev=outcome.rev) if outcome.status is WriteStatus.COMMITTED else None

        return await self._store.until_committed(attempt)

    async def delete(self, session_id: str) -> None:
        """Delete the session and all its state."""

        async def attempt() -> bool | None:
            status = await self._store.delete(await self._store.record(session_id))
            if status is WriteStatus.GONE:
                raise errors.SessionNotFound(session_id)
            return True if status is WriteStatus.COMMITTED else None

        await self._store.until_committed(attempt)
