"""Sessions: creating, reading, changing and deleting them.

Every change is a compare-and-set on the session's ``rev`` through the
``SessionStore``; a change that loses the race re-reads and tries again.
"""

from __future__ import annotations

import builtins
import fnmatch
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adamhub_service import errors
from adamhub_service.model.outcomes import WriteStatus
from adamhub_service.model.principal import Principal
from adamhub_service.model.records import (
    SessionRecord,
    is_session_id,
    new_session_id,
    new_write_id,
    session_id_ms,
    utc_now,
)
from adamhub_service.model.repositories import (
    CreateKeyRepository,
    ExpiryRepository,
    ScreenRepository,
    SessionRepository,
    TenantRepository,
)
from adamhub_service.model.settings import SessionSettings
from adamhub_service.model.stored import QuotaRefusal
from adamhub_service.optim import (
    AdamConfig,
    AdamState,
    FloatArray,
    ParamGroup,
    init_state,
    with_changes,
)
from adamhub_service.sessions import checkpoints
from adamhub_service.sessions.checkpoints import Checkpoint
from adamhub_service.sessions.events import SessionEvent, session_events

# The longest a create's commit may take once it has reserved its id (its chunks expire
# after ADAMHUB_PENDING_WRITE_TTL_SECONDS, 600 by default; a commit does not outlive them).
CREATE_COMMIT_MS = 15 * 60 * 1000


@dataclass(frozen=True, slots=True)
class NormalInitSpec:
    """Initial parameters drawn from N(mean, std²) by numpy's default generator."""

    mean: float = 0.0
    std: float = 1.0
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class NewSession:
    """A request for a session: initial ``params``, or a ``size`` (zeros, or ``init``),
    or a whole ``state`` to go on from (an imported checkpoint, a fork)."""

    dtype: str
    optimizer: AdamConfig
    params: FloatArray | None = None
    size: int | None = None
    init: NormalInitSpec | None = None
    settings: SessionSettings = field(default_factory=SessionSettings)
    state: AdamState | None = None


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The limits on sessions: their size, and each tenant's count and parameters."""

    max_size: int
    tenant_max_sessions: int
    tenant_max_parameters: int


@dataclass(frozen=True, slots=True)
class Created:
    """A created session; ``replayed`` when an earlier request with the key created it."""

    record: SessionRecord
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class SessionChanges:
    """What a PATCH changes: optimizer fields, param groups (None: as they are), and
    settings by name (validated; those left out stay as they are)."""

    optimizer: dict[str, Any] = field(default_factory=dict)
    param_groups: list[dict[str, Any]] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewGroup:
    """A param group to append to a session: its initial parameters (in the session's
    dtype), the hyperparameters it sets, and the sizes of its tensors (None: one)."""

    params: FloatArray
    overrides: dict[str, Any] = field(default_factory=dict)
    segments: tuple[int, ...] | None = None


def grown_config(config: AdamConfig, size: int, group: NewGroup) -> AdamConfig:
    """``config`` with ``group`` appended: the vector so far becomes one group (and one
    segment) when it had none; 422 when the group does not fit."""
    added = int(group.params.size)
    segments = group.segments or (added,)
    if sum(segments) != added:
        raise errors.ValidationFailed(
            f"segments cover {sum(segments)} parameters; the group has {added}",
            errors=[{"loc": ["body", "segments"], "msg": f"must sum to {added}"}],
        )
    groups = config.param_groups or (ParamGroup(size),)
    try:
        return config.evolve(
            param_groups=(*groups, ParamGroup(added, **group.overrides)),
            segment_sizes=(*(config.segment_sizes or (size,)), *segments),
        )
    except (TypeError, ValueError) as exc:
        raise errors.ValidationFailed(
            str(exc), errors=[{"loc": ["body"], "msg": str(exc)}]
        ) from exc


def changed_optimizer(config: AdamConfig, changes: SessionChanges) -> AdamConfig:
    """The optimizer config with a PATCH's changes (422 when they do not fit it)."""
    try:
        return with_changes(config, changes.optimizer, changes.param_groups)
    except ValueError as exc:  # the API checks most of them first
        raise errors.ValidationFailed(
            str(exc), errors=[{"loc": ["body"], "msg": str(exc)}]
        ) from exc


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


def name_matches(name: str | None, pattern: str) -> bool:
    """Whether a session's name matches ``pattern``: a glob with ``*``, ``?`` or ``[…]``,
    else a part of the name; case-insensitive."""
    if name is None:
        return False
    name, pattern = name.lower(), pattern.lower()
    if any(char in pattern for char in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


class SessionService:
    """Sessions as the API sees them; every call on a session is checked against the
    caller (``Principal.authorize``)."""

    def __init__(
        self,
        store: SessionRepository,
        tenants: TenantRepository,
        create_keys: CreateKeyRepository,
        expiry: ExpiryRepository,
        *,
        screening: ScreenRepository | None = None,
        chunk_elements: int,
        spread_chunks: bool = False,
        limits: SessionLimits,
        idempotency_ttl_seconds: float,
    ) -> None:
        self._store = store
        self._tenants = tenants
        self._create_keys = create_keys
        self._expiry = expiry
        self._screening = screening
        self._chunk_elements = chunk_elements
        # On a Redis Cluster the chunks of a session of several are spread over its
        # primaries (one chunk gains nothing, and would cost the spread's round trips).
        self._spread_chunks = spread_chunks
        self._limits = limits
        self._idempotency_ttl_ms = int(idempotency_ttl_seconds * 1000)

    async def create(
        self,
        spec: NewSession,
        principal: Principal,
        *,
        idempotency_key: str | None = None,
        request_digest: str = "",
    ) -> Created:
        """Store a new session of the caller's tenant at step 0.

        With an ``idempotency_key``, a retry of the same request (same ``request_digest``)
        answers the session the first one created, and a different request with the
        key is refused.
        """
        principal.require("sessions.create")
        if spec.state is not None:
            size: int | None = spec.state.size
        else:
            size = spec.size if spec.params is None else int(spec.params.size)
        assert size is not None, "a NewSession has params, a size or a state"
        max_size = self._limits.max_size
        if size > max_size:
            raise errors.ValidationFailed(
                f"{size} parameters are over this service's maximum of {max_size}",
                max_size=max_size,
                errors=[{"loc": ["size"], "msg": f"at most {max_size}"}],
            )
        session_id = new_session_id()
        if idempotency_key is not None:
            recorded = await self._create_keys.claim(
                principal.tenant,
                idempotency_key,
                f"{session_id}:{request_digest}",
                self._idempotency_ttl_ms,
            )
            session_id, recorded_digest = recorded.split(":", 1)
            if recorded_digest != request_digest:
                raise errors.IdempotencyKeyReused(
                    "this Idempotency-Key was already used with a different request",
                    session_id=session_id,
                )
        now = utc_now()
        record = SessionRecord(
            id=session_id,
            size=size,
            dtype=spec.dtype,
            chunk_elements=self._chunk_elements,
            optimizer=spec.optimizer,
            t=0 if spec.state is None else spec.state.step,
            rev=1,
            head=new_write_id(),
            created_at=now,
            updated_at=now,
            tenant=principal.tenant,
            settings=spec.settings,
            spread=self._spread_chunks and size > self._chunk_elements,
        )
        if spec.state is not None:
            state = spec.state
        else:
            params = spec.params
            if params is None:
                params = initial_params(size, spec.dtype, spec.init)
            state = init_state(params, spec.optimizer)
        refusal = await self._tenants.reserve(
            record,
            max_sessions=self._limits.tenant_max_sessions,
            max_parameters=self._limits.tenant_max_parameters,
        )
        if refusal is not None:
            raise self._over_quota(principal, refusal, "this session")
        if record.settings.expires_after_idle_seconds is not None:
            # Indexed first: the janitor drops the ids of sessions that were not made.
            await self._expiry.track(record.id, expires=True)
        try:
            status = await self._store.create(record, state)
        except errors.StoreUnavailable:
            await self._tenants.release(record.tenant, record.id)  # surely not created
            raise
        if status is WriteStatus.COMMITTED:
            return Created(record)
        # Only a retried create can find its id taken: by the request that created it.
        assert idempotency_key is not None, f"session id {session_id} was taken"
        return Created(await self._store.record(session_id), replayed=True)

    def _over_quota(
        self, principal: Principal, refusal: QuotaRefusal, what: str
    ) -> errors.QuotaExceeded:
        """403 ``quota-exceeded``: ``what`` would take the tenant past a limit."""
        limit = (
            self._limits.tenant_max_sessions
            if refusal.what == "sessions"
            else self._limits.tenant_max_parameters
        )
        return errors.QuotaExceeded(
            f"tenant {principal.tenant!r} has {refusal.current} {refusal.what} of {limit}; "
            f"{what} would pass the limit",
            quota=refusal.what,
            limit=limit,
            current=refusal.current,
        )

    async def get(
        self, session_id: str, principal: Principal, action: str, *, fresh: bool = True
    ) -> SessionRecord:
        """The session's record if the caller may ``action`` it (a cached record when not
        ``fresh``; see ``SessionStore.record``)."""
        record = await self._store.record(session_id, fresh=fresh)
        principal.authorize(record, action)
        return record

    async def list(
        self,
        principal: Principal,
        *,
        after: str | None,
        limit: int,
        name: str | None = None,
        order: str = "created_at",
        tags: Sequence[str] = (),
    ) -> tuple[list[SessionRecord], str | None]:
        """A page of the caller's sessions, and the next page's cursor (the last id of
        this page). In creation order by default; ``order`` (``created_at``,
        ``updated_at``, ``-`` for newest first), ``name`` (see ``name_matches``) and
        ``tags`` (sessions having every one) read the tenant's whole index, which its
        session quota bounds."""
        principal.require("sessions.read")
        if after is not None and not is_session_id(after):
            raise errors.ValidationFailed(
                f"cursor {after!r} is not a session id",
                errors=[{"loc": ["query", "cursor"], "msg": "not a session id"}],
            )
        if name is None and not tags and order == "created_at":
            records, cursor = await self._page(principal.tenant, after=after, limit=limit)
            return [record for record in records if principal.sees(record)], cursor
        wanted = frozenset(tags)
        found = [
            record
            for record in await self._all_records(principal.tenant)
            if principal.sees(record)
            and (name is None or name_matches(record.settings.name, name))
            and wanted <= frozenset(record.settings.tags)
        ]
        field = order.lstrip("-")
        found.sort(key=lambda record: (getattr(record, field), record.id))
        if order.startswith("-"):
            found.reverse()
        start = 0
        if after is not None:
            start = next((i + 1 for i, r in enumerate(found) if r.id == after), len(found))
        page = found[start : start + limit]
        more = start + limit < len(found)
        return page, (page[-1].id if page and more else None)

    async def _page(
        self, tenant: str, *, after: str | None, limit: int
    ) -> tuple[builtins.list[SessionRecord], str | None]:
        """Up to ``limit`` of the tenant's records in creation order after ``after``, and
        the last id read when more may follow."""
        ids = await self._tenants.ids(tenant, after=after, limit=limit)
        found = await self._store.read_records(ids)
        for session_id, record in zip(ids, found, strict=True):
            if record is None and self._surely_not_in_creation(session_id):
                # Repair: a delete that stopped between the session and its index, or a
                # create that stopped between its index and its session.
                await self._tenants.release(tenant, session_id)
        records = [record for record in found if record is not None]
        return records, (ids[-1] if ids and len(ids) == limit else None)

    def _surely_not_in_creation(self, session_id: str) -> bool:
        """Whether no create can still commit this id: its id was made (at a create's
        first attempt) longer ago than a retry of that create can come (the create key's
        TTL), plus the longest a commit takes. Released sooner, an id a create then
        commits would be a session its tenant's index does not list."""
        age_ms = time.time_ns() // 1_000_000 - session_id_ms(session_id)
        return age_ms > self._idempotency_ttl_ms + CREATE_COMMIT_MS

    async def _all_records(self, tenant: str) -> builtins.list[SessionRecord]:
        """Every record of the tenant, in creation order."""
        found: builtins.list[SessionRecord] = []
        after = None
        while True:
            records, after = await self._page(tenant, after=after, limit=1000)
            found += records
            if after is None:
                return found

    async def params(
        self,
        session_id: str,
        principal: Principal,
        *,
        unless_heads: frozenset[str] = frozenset(),
    ) -> tuple[SessionRecord, FloatArray | None]:
        """The current record and parameters (None when the head is in ``unless_heads``)."""
        await self.get(session_id, principal, "params.read", fresh=False)
        return await self._store.params(session_id, unless_heads=unless_heads)

    async def history(
        self, session_id: str, principal: Principal, *, after_t: int | None, limit: int
    ) -> builtins.list[bytes]:
        """Up to ``limit`` history points (JSON), oldest first: those after step
        ``after_t``, or the newest when it is None."""
        await self.get(session_id, principal, "sessions.read", fresh=False)
        return await self._store.history(session_id, after_t=after_t, limit=limit)

    async def screening(
        self, session_id: str, principal: Principal, *, limit: int
    ) -> tuple[builtins.list[bytes], dict[str, float]]:
        """The session's newest ``limit`` refused gradients (JSON), oldest first, and the
        workers in quarantine now, with when it ends (Unix seconds)."""
        await self.get(session_id, principal, "sessions.read", fresh=False)
        if self._screening is None:
            return [], {}
        refusals = await self._screening.refusals(session_id, after_ms=None, limit=limit)
        return refusals, await self._screening.quarantined(session_id)

    async def release_worker(self, session_id: str, worker: str, principal: Principal) -> None:
        """End a worker's quarantine (and its refusals in a row) on the session."""
        await self.get(session_id, principal, "sessions.update", fresh=False)
        if self._screening is not None:
            await self._screening.release(session_id, worker)

    async def events(
        self,
        session_id: str,
        principal: Principal,
        *,
        last_event_id: int | None,
        seconds: float,
        keepalive_seconds: float,
    ) -> AsyncIterator[SessionEvent]:
        """The session's steps from now on (or after ``last_event_id``), a rollback when
        it goes back, and a keep-alive after ``keepalive_seconds`` of quiet; for
        ``seconds``."""
        record = await self.get(session_id, principal, "sessions.read")
        after = record.t if last_event_id is None else min(last_event_id, record.t)
        screening = self._screening if record.settings.screen is not None else None
        return session_events(
            self._store,
            session_id,
            after,
            seconds=seconds,
            keepalive_seconds=keepalive_seconds,
            screening=screening,
        )

    async def update(
        self, session_id: str, changes: SessionChanges, principal: Principal
    ) -> SessionRecord:
        """Change settings, name or metadata; the vectors and ``t`` stay."""
        await self.get(session_id, principal, "sessions.update", fresh=False)

        async def attempt() -> SessionRecord | None:
            current = await self._store.record(session_id)
            new = current.evolve(updated_at=utc_now())
            if changes.optimizer or changes.param_groups is not None:
                new = new.evolve(optimizer=changed_optimizer(current.optimizer, changes))
            if changes.settings:
                new = new.evolve(settings=current.settings.evolve(**changes.settings))
            if new.settings.expires_after_idle_seconds is not None:
                await self._expiry.track(session_id, expires=True)
            outcome = await self._store.commit_record(current, new)
            if outcome.status is WriteStatus.GONE:
                raise errors.SessionNotFound(session_id)
            return new.evolve(rev=outcome.rev) if outcome.status is WriteStatus.COMMITTED else None

        return await self._store.until_committed(attempt)

    async def add_param_group(
        self, session_id: str, group: NewGroup, principal: Principal
    ) -> SessionRecord:
        """Append a param group (as torch's ``add_param_group``): its parameters join the
        vector with m = v = 0 and step counts 0, within the tenant's quota; the session's
        snapshots and log before it are retired (a rollback cannot cross it)."""
        record = await self.get(session_id, principal, "sessions.update", fresh=False)
        if record.settings.rounds is not None:
            raise errors.ValidationFailed(
                "param groups cannot be added to a rounds session: its workers' "
                "contributions are of one size",
                errors=[{"loc": ["body"], "msg": "a rounds session"}],
            )
        added = int(group.params.size)
        max_size = self._limits.max_size
        if record.size + added > max_size:
            raise errors.ValidationFailed(
                f"{record.size + added} parameters are over this service's maximum of {max_size}",
                max_size=max_size,
                errors=[{"loc": ["body", "params"], "msg": f"at most {max_size - record.size}"}],
            )
        grown_config(record.optimizer, record.size, group)  # 422 before anything is written

        async def attempt() -> SessionRecord | None:
            current = await self._store.state(session_id)
            before = current.record
            config = grown_config(before.optimizer, before.size, group)
            new = before.evolve(
                size=before.size + added,
                optimizer=config,
                head=new_write_id(),
                updated_at=utc_now(),
                grown_from=(*before.grown_from, before.size),
            )
            refusal = await self._tenants.resize(
                new, max_parameters=self._limits.tenant_max_parameters
            )
            if refusal is not None:
                raise self._over_quota(principal, refusal, f"{added} more parameters")
            old = len(before.optimizer.segment_sizes) or 1
            state = grown_state(current.state, group.params, old, len(config.segment_sizes) - old)
            outcome = await self._store.grow(before, new, state)
            if outcome.status is not WriteStatus.COMMITTED:
                # Counted at the new size for nothing: back to the size it has.
                await self._tenants.resize(before, max_parameters=2**62)
            if outcome.status is WriteStatus.GONE:
                raise errors.SessionNotFound(session_id)
            return new.evolve(rev=outcome.rev) if outcome.status is WriteStatus.COMMITTED else None

        return await self._store.until_committed(attempt)

    async def replace_params(
        self, session_id: str, params: FloatArray, principal: Principal
    ) -> SessionRecord:
        """Start the optimisation over from ``params``: zero moments, ``t`` = 0."""
        await self.get(session_id, principal, "sessions.update", fresh=False)

        async def attempt() -> SessionRecord | None:
            current = await self._store.record(session_id)
            state = init_state(params.astype(current.dtype, copy=False), current.optimizer)
            new = current.evolve(t=0, head=new_write_id(), updated_at=utc_now())
            outcome = await self._store.reset(current, new, state)
            if outcome.status is WriteStatus.GONE:
                raise errors.SessionNotFound(session_id)
            return new.evolve(rev=outcome.rev) if outcome.status is WriteStatus.COMMITTED else None

        return await self._store.until_committed(attempt)

    async def rollback(self, session_id: str, t: int, principal: Principal) -> SessionRecord:
        """Return the session to its state right after step ``t``: θ, m, v and ``t``
        exactly as they were then; 409 ``history-unavailable`` when that is not kept."""
        await self.get(session_id, principal, "sessions.update", fresh=False)

        async def attempt() -> SessionRecord | None:
            current = await self._store.record(session_id)
            if t == current.t:
                return current
            new = current.evolve(t=t, head=new_write_id(), updated_at=utc_now())
            outcome = await self._store.rollback(current, new)
            if outcome.status is WriteStatus.GONE:
                raise errors.SessionNotFound(session_id)
            if outcome.status is WriteStatus.NO_HISTORY:
                assert outcome.oldest_t is not None
                raise errors.HistoryUnavailable(
                    f"the session is at t={current.t} and keeps what returning to steps "
                    f"{outcome.oldest_t} to {current.t} needs; raise history_steps to keep more",
                    oldest_t=outcome.oldest_t,
                    t=current.t,
                )
            return new.evolve(rev=outcome.rev) if outcome.status is WriteStatus.COMMITTED else None

        return await self._store.until_committed(attempt)

    async def checkpoint(
        self, session_id: str, principal: Principal
    ) -> tuple[SessionRecord, bytes]:
        """The session's state at its current step as a checkpoint file."""
        await self.get(session_id, principal, "params.read", fresh=False)
        current = await self._store.state(session_id)
        record = current.record
        file = checkpoints.encode(Checkpoint(current.state, record.optimizer, record.dtype))
        return record, file

    async def import_checkpoint(
        self,
        data: bytes,
        principal: Principal,
        *,
        name: str | None = None,
        settings: SessionSettings | None = None,
        idempotency_key: str | None = None,
        request_digest: str = "",
    ) -> Created:
        """A new session of the caller's tenant that goes on from a checkpoint file, with
        ``settings`` (or only a ``name``)."""
        principal.require("sessions.create")
        checkpoint = checkpoints.decode(data, max_size=self._limits.max_size)
        spec = NewSession(
            dtype=checkpoint.dtype,
            optimizer=checkpoint.config,
            state=checkpoint.state,
            settings=SessionSettings(name=name) if settings is None else settings,
        )
        return await self.create(
            spec, principal, idempotency_key=idempotency_key, request_digest=request_digest
        )

    async def fork(
        self, session_id: str, principal: Principal, *, changes: dict[str, Any] | None = None
    ) -> Created:
        """A new session with this one's state and settings, with ``changes`` (settings
        by name, validated)."""
        await self.get(session_id, principal, "params.read", fresh=False)
        current = await self._store.state(session_id)
        record = current.record
        spec = NewSession(
            dtype=record.dtype,
            optimizer=record.optimizer,
            state=current.state,
            settings=record.settings.evolve(**(changes or {})),
        )
        return await self.create(spec, principal)

    async def delete(self, session_id: str, principal: Principal) -> None:
        """Delete the session and all its state."""
        await self.get(session_id, principal, "sessions.delete")

        async def attempt() -> SessionRecord | None:
            current = await self._store.record(session_id)
            status = await self._store.delete(current)
            if status is WriteStatus.GONE:
                raise errors.SessionNotFound(session_id)
            return current if status is WriteStatus.COMMITTED else None

        deleted = await self._store.until_committed(attempt)
        # The tenant's index is another key (slot): released after the session went.
        await self._tenants.release(deleted.tenant, deleted.id)


def grown_state(state: AdamState, params: FloatArray, old: int, new: int) -> AdamState:
    """``state`` (of ``old`` segments) with ``params`` appended as ``new`` segments: zero
    moments, step counts 0."""
    added = params.astype(state.dtype, copy=False)
    zeros = np.zeros(added.size, dtype=state.dtype)
    return AdamState(
        params=np.concatenate([state.params, added]),
        exp_avg=np.concatenate([state.exp_avg, zeros]),
        exp_avg_sq=np.concatenate([state.exp_avg_sq, zeros]),
        max_exp_avg_sq=None
        if state.max_exp_avg_sq is None
        else np.concatenate([state.max_exp_avg_sq, zeros]),
        step=state.step,
        segment_steps=(*state.steps_of(old), *(0,) * new),
    )
