"""The Redis keys of adamhub: every key of a session under one hash tag.

- ``adamhub:{<id>}:meta``: a hash, the session's record (``rev``, ``head``, ``t``, …)
- ``adamhub:{<id>}:c:<write id>:<vector>:<i>``: chunk ``i`` of a stored vector
- ``adamhub:{<id>}:idem:<key>``: an idempotency record
- ``adamhub:{<id>}:idems``: the session's idempotency records, by expiry
- ``adamhub:{<id>}:log``, ``:snaps``, ``:round``: hashes the session scripts keep
  (``lua/common.lua``)
- ``adamhub:tenant:{<tenant>}:sessions``, ``:sizes``, ``:create:<key>``: a tenant's
  index of sessions, their sizes, its creates' Idempotency-Keys
- ``adamhub:{keys}:index``, ``:key:<sha256>``, ``:key-id:<id>``: the API keys

The hash tag ``{<id>}`` puts a session in one Redis Cluster slot, so one Lua script
can touch all its keys.
"""

from __future__ import annotations

from collections.abc import Iterable

# The ids of the sessions that expire when idle (expires_after_idle_seconds).
EXPIRING_KEY = "adamhub:expiring"


def session_prefix(session_id: str) -> str:
    """The prefix of every key of a session."""
    return f"adamhub:{{{session_id}}}:"


def meta_key(session_id: str) -> str:
    """The key of a session's meta hash."""
    return f"{session_prefix(session_id)}meta"


def history_key(session_id: str) -> str:
    """The sorted set of a session's history points, by step (``lua/common.lua``)."""
    return f"{session_prefix(session_id)}hist"


def round_key(session_id: str) -> str:
    """The hash of a rounds session's open round (``lua/common.lua``)."""
    return f"{session_prefix(session_id)}round"


def chunk_keys(
    session_id: str, write_id: str, fields: Iterable[str], chunk_count: int
) -> list[str]:
    """The keys of every chunk of ``fields`` in the version ``write_id``."""
    prefix = f"{session_prefix(session_id)}c:{write_id}:"
    return [f"{prefix}{name}:{i}" for name in fields for i in range(chunk_count)]


def idempotency_index_key(session_id: str) -> str:
    """The sorted set of a session's idempotency records, by expiry (for deletes)."""
    return f"{session_prefix(session_id)}idems"


def idempotency_key(session_id: str, key: str) -> str:
    """The key of an idempotency record."""
    return f"{session_prefix(session_id)}idem:{key}"


# Tenants: an index of each tenant's sessions, the sizes of its sessions for the
# parameter quota, its create idempotency keys; all under the tag ``{<tenant>}``, so a
# script on a tenant's quota touches one Redis Cluster slot.
def tenant_prefix(tenant: str) -> str:
    """The prefix of every key of a tenant."""
    return f"adamhub:tenant:{{{tenant}}}:"


def tenant_index_key(tenant: str) -> str:
    """The sorted set of a tenant's session ids."""
    return f"{tenant_prefix(tenant)}sessions"


def tenant_sizes_key(tenant: str) -> str:
    """The hash of a tenant's session sizes (session id → size)."""
    return f"{tenant_prefix(tenant)}sizes"


def create_idempotency_key(tenant: str, key: str) -> str:
    """The record of a create's Idempotency-Key: ``<session id>:<digest of the request>``."""
    return f"{tenant_prefix(tenant)}create:{key}"


# API keys: only a hash of each secret is stored; all under the tag ``{keys}``, so a key
# is made or revoked in one transaction (one slot).
API_KEYS_INDEX = "adamhub:{keys}:index"


def api_key_key(secret_hash: str) -> str:
    """The hash holding an API key's grant, by the SHA-256 of its secret."""
    return f"adamhub:{{keys}}:key:{secret_hash}"


def api_key_id_key(key_id: str) -> str:
    """The secret hash of an API key, by its id."""
    return f"adamhub:{{keys}}:key-id:{key_id}"


def rate_key(key_id: str) -> str:
    """The token bucket of an API key."""
    return f"adamhub:rate:{key_id}"


def screen_key(session_id: str) -> str:
    """The hash of a session's screening record: refusals in a row and quarantines, by
    worker (``r:<worker>``, ``q:<worker>`` → until, ms)."""
    return f"{session_prefix(session_id)}screen"


def norms_key(session_id: str) -> str:
    """The list of the norms of a session's newest accepted gradients (newest first)."""
    return f"{session_prefix(session_id)}norms"


def refusals_key(session_id: str) -> str:
    """The sorted set of a session's refused gradients, by time (ms), as JSON."""
    return f"{session_prefix(session_id)}refusals"
