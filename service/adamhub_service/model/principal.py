"""The caller of a request, and the one rule of what it may see and do.

A key belongs to one tenant and grants some actions, on every session of its tenant or
on a list of them. A session of another tenant, or one outside the key's list, is
answered exactly as an unknown one (404); a visible session without the action is 403.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from adamhub_service import errors
from adamhub_service.model.records import DEFAULT_TENANT, SessionRecord

ALL = "*"
# What a key may grant: every action, or one of these.
Action = Literal[
    "*",
    "sessions.create",
    "sessions.read",
    "sessions.update",
    "sessions.delete",
    "steps.create",
    "params.read",
    "keys.manage",
    "metrics.read",
]
ACTIONS: tuple[str, ...] = tuple(action for action in get_args(Action) if action != ALL)
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant, the key's id, its actions, and its sessions (None: all)."""

    tenant: str
    key_id: str
    actions: frozenset[str]
    sessions: frozenset[str] | None = None

    def may(self, action: str) -> bool:
        """Whether the key grants ``action``."""
        return ALL in self.actions or action in self.actions

    def sees(self, record: SessionRecord) -> bool:
        """Whether the session exists for this caller at all."""
        return record.tenant == self.tenant and (
            self.sessions is None or record.id in self.sessions
        )

    def require(self, action: str) -> None:
        """Raise ``Forbidden`` unless the key grants ``action``."""
        if not self.may(action):
            raise errors.Forbidden(
                f"this key does not grant {action!r}", action=action, key_id=self.key_id
            )

    def authorize(self, record: SessionRecord, action: str) -> None:
        """404 for a session this caller cannot see; 403 without ``action`` on it."""
        if not self.sees(record):
            raise errors.SessionNotFound(record.id)
        self.require(action)


MASTER = Principal(DEFAULT_TENANT, "master", frozenset({ALL}))
# Protected mode (no master key): a loopback client acts as the master key would.
LOCAL = Principal(DEFAULT_TENANT, "local", frozenset({ALL}))
