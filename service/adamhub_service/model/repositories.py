"""What the domain needs of storage, as protocols: one per concern.

``storage/`` implements each over Redis (``storage/connection.py`` builds them); the
domain (``sessions``, ``steps``, ``tenancy``) depends on these only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from adamhub_service.model.api_keys import ApiKey
from adamhub_service.model.log import Contribution
from adamhub_service.model.outcomes import (
    AppendOutcome,
    ContributeOutcome,
    Holder,
    IdempotencyClaim,
    IdempotencyRecord,
    RoundView,
    WriteOutcome,
    WriteStatus,
)
from adamhub_service.model.records import SessionRecord
from adamhub_service.model.stored import (
    CachedSession,
    LoggedStep,
    QuotaRefusal,
    RateDecision,
    ScreenView,
    Wake,
)
from adamhub_service.optim import AdamState, FloatArray

T = TypeVar("T")


class SessionWatch(Protocol):
    """A session's news from ``with`` on, for a caller that waits more than once."""

    def __enter__(self) -> SessionWatch: ...

    def __exit__(self, *exc: object) -> None: ...

    async def wait(self, seconds: float, *, until_step: int | None = None) -> Wake:
        """Return at once when news came since the last wait (or the session was heard
        to reach ``until_step``), else at the next news or after ``seconds`` (at most a
        second)."""


class StagedWrite(Protocol):
    """A logged gradient on its way to the store (``SessionRepository.stage_log``)."""

    async def abandon(self) -> None:
        """Delete what was written: no append will name it."""


class SessionRepository(Protocol):
    """Sessions' records, states (θ, m, v at a version), logs, snapshots and history
    points; every write a compare-and-set on the record's ``rev``."""

    @property
    def cached_bytes(self) -> int:
        """Bytes of state this process holds in memory."""

    async def until_committed(self, attempt: Callable[[], Awaitable[T | None]]) -> T:
        """Run ``attempt`` until it returns a result (None: it lost a race); 409
        ``step-conflict`` when every attempt lost."""

    async def record(self, session_id: str, *, fresh: bool = True) -> SessionRecord:
        """The session's record (404 when there is none); a cached one when not ``fresh``."""

    async def read_records(self, session_ids: Sequence[str]) -> list[SessionRecord | None]:
        """The records of several sessions (None for those that are gone)."""

    async def load(self, session_id: str) -> CachedSession:
        """The session's state: the cached one (a hint), else the stored one."""

    async def state(self, session_id: str) -> CachedSession:
        """The current state, verified against the store."""

    async def params(
        self, session_id: str, *, unless_heads: frozenset[str] = frozenset()
    ) -> tuple[SessionRecord, FloatArray | None]:
        """The current record and parameters (None when the head is in ``unless_heads``)."""

    async def params_of(self, record: SessionRecord) -> tuple[SessionRecord, FloatArray]:
        """The parameters of ``record``'s version, or newer."""

    async def history(self, session_id: str, *, after_t: int | None, limit: int) -> list[bytes]:
        """History points (JSON), oldest first: after ``after_t``, or the newest."""

    async def read_idempotency(self, session_id: str, key: str) -> IdempotencyRecord | None:
        """What ``key`` produced on this session, if it is recorded."""

    async def notified(self, session_id: str, seconds: float) -> Wake:
        """Return when the session may have a new t (with the record, when this
        process's commit made it), or after ``seconds`` without news."""

    def watch(self, session_id: str) -> SessionWatch:
        """The session's news for a caller that waits more than once."""

    async def create(self, record: SessionRecord, state: AdamState) -> WriteStatus:
        """Store a new session: COMMITTED, or ID_TAKEN."""

    def stage_log(self, record: SessionRecord, step: LoggedStep) -> StagedWrite:
        """Start writing the logged gradient of ``step`` (the next of ``record``'s
        session) before it is appended: it travels while the step is computed."""

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
        """Log ``steps`` computed from ``current`` if nothing moved (the close of the
        open round when it still holds exactly the contributions ``round_entries``).
        ``staged``: the one step's gradient, written by ``stage_log``; it is deleted
        unless committed."""

    async def reset(
        self, current: SessionRecord, new: SessionRecord, state: AdamState
    ) -> WriteOutcome:
        """Start the session over from ``state`` (step 0) if nothing moved."""

    async def grow(
        self, current: SessionRecord, new: SessionRecord, state: AdamState
    ) -> WriteOutcome:
        """Grow the session (size, groups, segments) to ``new`` with ``state`` at its t,
        if nothing moved; older snapshots and the log are retired."""

    async def commit_record(self, current: SessionRecord, new: SessionRecord) -> WriteOutcome:
        """Change the record's settings (not its vectors) if nothing moved."""

    async def rollback(self, current: SessionRecord, new: SessionRecord) -> WriteOutcome:
        """Return the session to step ``new.t`` if nothing moved and it is kept."""

    async def delete(self, current: SessionRecord) -> WriteStatus:
        """Delete the session and all its keys if nothing moved."""


class RoundRepository(Protocol):
    """The open round of each rounds session."""

    async def contribute(
        self,
        record: SessionRecord,
        contribution: Contribution,
        gradient: FloatArray,
        *,
        base_step: int | None,
        idempotency: IdempotencyClaim | None,
        holder: Holder | None = None,
    ) -> ContributeOutcome:
        """Add a contribution to the open round (at ``base_step``, or whichever): stored,
        or held in ``holder``'s memory (``ELSEWHERE`` when another process holds some)."""

    async def seal(
        self, session_id: str, base: int, *, grace_ms: int, holder: Holder | None = None
    ) -> RoundView:
        """The open round at ``base``, sealed for this caller to close when it is due
        (renewing ``holder``'s lease when it holds contributions of it)."""

    async def spill(
        self,
        record: SessionRecord,
        base: int,
        holder: Holder,
        contribution: Contribution,
        gradient: FloatArray,
    ) -> WriteStatus:
        """Store a contribution ``holder`` holds in the round at ``base``: COMMITTED,
        or CONFLICT when the round no longer holds it."""

    async def drop_round(
        self, session_id: str, base: int, contributions: int, why: str
    ) -> WriteStatus:
        """Drop the open round at ``base`` if it still holds ``contributions``."""

    async def round_contributions(
        self,
        record: SessionRecord,
        contributions: int,
        known: Mapping[str, FloatArray] | None = None,
    ) -> list[tuple[Contribution, FloatArray]] | None:
        """The round's first ``contributions`` in order (None: it is another round now,
        or holds a contribution held in another process's memory)."""


class TenantRepository(Protocol):
    """Each tenant's index of its sessions, and the quotas counted on it."""

    async def reserve(
        self, record: SessionRecord, *, max_sessions: int, max_parameters: int
    ) -> QuotaRefusal | None:
        """Index a new session in its tenant's quota; a refusal when over a limit."""

    async def resize(self, record: SessionRecord, *, max_parameters: int) -> QuotaRefusal | None:
        """Count the session at its new size; a refusal when over the parameter limit."""

    async def release(self, tenant: str, session_id: str) -> None:
        """Take a session out of its tenant's index and quota."""

    async def ids(self, tenant: str, *, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` of the tenant's session ids in creation order after ``after``."""


class CreateKeyRepository(Protocol):
    """The Idempotency-Keys of creates."""

    async def claim(self, tenant: str, key: str, value: str, ttl_ms: int) -> str:
        """Record ``value`` for the key unless recorded; return what is recorded."""


class ExpiryRepository(Protocol):
    """The index of the sessions that expire when idle."""

    async def track(self, session_id: str, *, expires: bool) -> None:
        """Put the session in (or take it out of) the index."""

    async def ids(self) -> list[str]:
        """The ids in the index."""


class RateRepository(Protocol):
    """Token buckets per API key."""

    async def take_token(self, key_id: str, *, rate: float, burst: int) -> RateDecision:
        """Take a token from the key's bucket."""


class ApiKeyRepository(Protocol):
    """API keys, by the hash of their secret and by id."""

    async def save(self, key: ApiKey, secret_hash: str) -> None:
        """Store a new key."""

    async def by_secret_hash(self, secret_hash: str) -> ApiKey | None:
        """The key whose secret has this hash."""

    async def by_id(self, key_id: str) -> ApiKey | None:
        """The key with this id."""

    async def all(self) -> list[ApiKey]:
        """Every key, oldest first."""

    async def delete(self, key_id: str) -> bool:
        """Delete a key; False when there was none."""


class ScreenRepository(Protocol):
    """Sessions' screening records: accepted norms, refusals, quarantines."""

    async def look(self, session_id: str, worker: str, window: int) -> ScreenView:
        """The worker's quarantine, the store's clock and the newest accepted norms."""

    async def refuse(
        self,
        session_id: str,
        worker: str,
        event: str,
        *,
        quarantine_after: int,
        quarantine_ms: int,
    ) -> int | None:
        """Count a refusal; until when (ms) the worker is quarantined, if it now is."""

    async def accept(self, session_id: str, worker: str, norm: float, window: int) -> None:
        """Count an accepted gradient's norm."""

    async def release(self, session_id: str, worker: str) -> None:
        """End a worker's quarantine."""

    async def quarantined(self, session_id: str) -> dict[str, float]:
        """The workers in quarantine now, and until when (Unix seconds)."""

    async def refusals(self, session_id: str, *, after_ms: int | None, limit: int) -> list[bytes]:
        """Refusals (JSON), oldest first: after ``after_ms``, or the newest."""
