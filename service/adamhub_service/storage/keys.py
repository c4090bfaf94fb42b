"""The Redis keys of adamhub: every key of a session under one hash tag.

- ``adamhub:{<id>}:meta``: a hash, the session's record (``rev``, ``head``, ``t``, …)
- ``adamhub:{<id>}:c:<write id>:<vector>:<i>``: chunk ``i`` of a stored vector
- ``adamhub:{<id>}:idem:<key>``: an idempotency record
- ``adamhub:sessions``: a sorted set of every session id, for listing

The hash tag ``{<id>}`` puts a session in one Redis Cluster slot, so one Lua script
can touch all its keys.
"""

from __future__ import annotations

from collections.abc import Iterable

INDEX_KEY = "adamhub:sessions"


def session_prefix(session_id: str) -> str:
    """The prefix of every key of a session."""
    return f"adamhub:{{{session_id}}}:"


def meta_key(session_id: str) -> str:
    """The key of a session's meta hash."""
    return f"{session_prefix(session_id)}meta"


def chunk_keys(
    session_id: str, write_id: str, fields: Iterable[str], chunk_count: int
) -> list[str]:
    """The keys of every chunk of ``fields`` in the version ``write_id``."""
    prefix = f"{session_prefix(session_id)}c:{write_id}:"
    return [f"{prefix}{name}:{i}" for name in fields for i in range(chunk_count)]


def idempotency_key(session_id: str, key: str) -> str:
    """The key of an idempotency record."""
    return f"{session_prefix(session_id)}idem:{key}"
