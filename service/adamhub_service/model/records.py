"""What the service knows about a session apart from its vectors."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from adamhub_service.model.settings import SessionSettings
from adamhub_service.optim import AdamConfig

SESSION_ID_PATTERN = re.compile(r"^s_[0-9a-f]{32}$")
# The tenant of the master key, and of sessions stored before tenants existed.
DEFAULT_TENANT = "default"


def new_session_id() -> str:
    """A fresh id whose lexical order is its creation order (ms clock, then random)."""
    return f"s_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def session_id_ms(session_id: str) -> int:
    """When the id was made (Unix ms), from its clock (``new_session_id``)."""
    return int(session_id[2:14], 16)


def new_write_id() -> str:
    """A fresh id naming one written version of a session's vectors."""
    return secrets.token_hex(8)


def is_session_id(value: str) -> bool:
    """Whether ``value`` has the form of a session id."""
    return SESSION_ID_PATTERN.fullmatch(value) is not None


def utc_now() -> str:
    """The current time as RFC 3339 UTC with a ``Z``, to the millisecond."""
    return rfc3339(datetime.now(UTC))


def parse_rfc3339(text: str) -> datetime:
    """A time written by ``rfc3339`` (or any RFC 3339 time), timezone-aware."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def rfc3339(moment: datetime) -> str:
    """A timezone-aware time as RFC 3339 UTC with a ``Z``, to the millisecond."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session's description and version, without its vectors.

    ``rev`` counts every change of the session (steps, parameter writes, settings
    changes) and is the fencing token of every write; ``head`` names the vectors' version
    (the ETag); ``t`` is Adam's step counter; ``chunk_elements`` is how the vectors are
    split in the store; ``tenant`` owns the session; ``settings`` are the rest
    (``SessionSettings``); ``grown_from`` the sizes it had before param groups were
    added to it; ``spread`` whether its chunks are spread over the store's cluster
    rather than kept in the session's slot.
    """

    id: str
    size: int
    dtype: str
    chunk_elements: int
    optimizer: AdamConfig
    t: int
    rev: int
    head: str
    created_at: str
    updated_at: str
    tenant: str = DEFAULT_TENANT
    settings: SessionSettings = field(default_factory=SessionSettings)
    # The sizes the session had before param groups were added to it, oldest first.
    grown_from: tuple[int, ...] = ()
    spread: bool = False

    def evolve(self, **changes: Any) -> SessionRecord:
        """A copy with some fields changed."""
        return replace(self, **changes)
