"""What a write script found, as types: one status per outcome, mirroring the Lua codes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class WriteStatus(IntEnum):
    """The first element of every reply of the session scripts (``lua/common.lua``)."""

    COMMITTED = 1  # the write is done
    REPLAYED = 2  # the idempotency key is already recorded: nothing was written
    CONFLICT = 3  # the rev moved on: re-read and try again
    GONE = 4  # there is no such session
    ID_TAKEN = 5  # a new session's id exists already
    EXPIRED = 6  # a chunk written for the commit expired before it
    NO_HISTORY = 7  # a rollback's step is not kept (or not reached)
    STALE = 8  # a contribution computed at another step than the open round's
    SEALED = 9  # the open round takes no more contributions: it is being closed
    DROPPED = 10  # the round was dropped: its step would not have been finite
    ELSEWHERE = 11  # another process holds contributions of the open round in memory


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that holds contributions to rounds in its memory: its ``token``
    (unique to the process), and the lease (ms) each of its looks at a round renews;
    past it, the contributions it holds are taken out of the round."""

    token: str
    lease_ms: int


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What an Idempotency-Key produced: the gradient's digest and the step it made."""

    digest: str
    applied_t: int

    def encode(self) -> str:
        """As stored: ``<digest>:<applied t>``."""
        return f"{self.digest}:{self.applied_t}"

    @classmethod
    def decode(cls, text: str) -> IdempotencyRecord:
        """From its stored form."""
        digest, applied_t = text.rsplit(":", 1)
        return cls(digest, int(applied_t))


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An idempotency record to write with a commit, unless its key is recorded already."""

    key: str
    record: IdempotencyRecord
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """The outcome of a write: ``rev`` when committed, ``replay`` when replayed."""

    status: WriteStatus
    rev: int | None = None
    replay: IdempotencyRecord | None = None
    oldest_t: int | None = None


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """The outcome of logging steps: when committed, the new ``rev`` and the bytes
    logged since the newest snapshot; when refused as a replay, which step's key
    (``replay_index``) and what it recorded."""

    status: WriteStatus
    rev: int | None = None
    log_bytes: int = 0
    replay_index: int | None = None
    replay: IdempotencyRecord | None = None


@dataclass(frozen=True, slots=True)
class ContributeOutcome:
    """The outcome of a contribution to a round: when taken, the round's ``base`` (the
    t it steps from), what it holds, whether this contribution completed it, when it
    began and the time now (the store's clock, ms); the session's ``t`` when refused as
    ``STALE`` or ``SEALED``; the recorded ``replay`` when the key was taken before."""

    status: WriteStatus
    base: int = 0
    contributions: int = 0
    samples: int = 0
    complete: bool = False
    first_ms: int = 0
    now_ms: int = 0
    replay: IdempotencyRecord | None = None


@dataclass(frozen=True, slots=True)
class RoundView:
    """An open round as a waiter sees it: whether this caller ``sealed`` it (and must
    close it now), what it holds, when it began and was sealed (0: not yet), and the
    store's clock, in ms. ``status`` is CONFLICT when the session is past the round,
    GONE when the session is, DROPPED (and ``dropped`` why) when the round was dropped."""

    status: WriteStatus
    sealed: bool = False
    contributions: int = 0
    samples: int = 0
    first_ms: int = 0
    sealed_ms: int = 0
    now_ms: int = 0
    dropped: str | None = None
    # The end of the lease of the process holding contributions in memory (0: none
    # does), and how many it holds.
    lease_ms: int = 0
    held: int = 0
    holding: bool = False  # whether the caller is that process
