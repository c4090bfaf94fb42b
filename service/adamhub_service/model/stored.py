"""The values storage and the domain pass each other: a session's state as read or
cached, a step to log, and the answers of the quota and rate-limit counters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from adamhub_service.model.log import LogEntry
from adamhub_service.model.outcomes import IdempotencyClaim
from adamhub_service.model.quantized import LoggedGradient
from adamhub_service.model.records import SessionRecord
from adamhub_service.optim import AdamConfig, AdamState, FloatArray


@dataclass(frozen=True, slots=True)
class CachedSession:
    """A session's record, the state of the version it names, the optimizer config
    that state's step was computed with (a log entry records a change of it), and the
    bytes logged since the newest snapshot (which decide when to write the next)."""

    record: SessionRecord
    state: AdamState
    config: AdamConfig
    log_bytes: int = 0

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        arrays = (self.state.params, self.state.exp_avg, self.state.exp_avg_sq)
        extra = self.state.max_exp_avg_sq
        return sum(a.nbytes for a in arrays) + (0 if extra is None else extra.nbytes)


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
    snapshot_segment_steps: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class LoggedStep:
    """A step to log: its entry, its gradient (in the entry's dtype), its idempotency
    record to write unless the key is recorded already, its history point (JSON)."""

    entry: LogEntry
    gradient: LoggedGradient
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


@dataclass(frozen=True, slots=True)
class ScreenView:
    """What screening a worker's gradient needs: when its quarantine ends (ms; None:
    not quarantined), the store's clock (ms), and the newest accepted norms."""

    quarantined_until_ms: int | None
    now_ms: int
    norms: list[float]


@dataclass(slots=True, eq=False)
class Wake:
    """How a wait ended: with ``news`` of the session or not (the time ran out); and
    the record a commit of this process made while it waited, when one did (the truth
    as of that commit: no read needed)."""

    news: bool = False
    record: SessionRecord | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """How the store answers: its mode (``standalone`` or ``cluster``), the primaries it
    reaches, their replicas, and how many replicas confirm each write."""

    mode: Literal["standalone", "cluster"]
    primaries: int
    replicas: int
    replica_acks: int
