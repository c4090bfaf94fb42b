"""An API key's grant, as stored (never its secret)."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from adamhub_service.model.principal import ALL, Principal
from adamhub_service.model.records import parse_rfc3339

SECRET_PREFIX = "ahk_"


def new_key_id() -> str:
    """A fresh key id whose lexical order is its creation order."""
    return f"k_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def new_secret() -> str:
    """A fresh secret: 256 random bits."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    """What is stored of a secret: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's grant: its tenant, actions, sessions (``("*",)``: all), expiry."""

    id: str
    tenant: str
    actions: tuple[str, ...]
    sessions: tuple[str, ...]
    expires_at: str | None
    description: str | None
    created_at: str

    def expired(self, now: datetime) -> bool:
        """Whether the key has expired at ``now`` (timezone-aware)."""
        if self.expires_at is None:
            return False
        return parse_rfc3339(self.expires_at) <= now

    def principal(self) -> Principal:
        """The caller a request with this key is."""
        sessions = None if ALL in self.sessions else frozenset(self.sessions)
        return Principal(self.tenant, self.id, frozenset(self.actions), sessions)
