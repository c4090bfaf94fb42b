"""The Redis keys of adamhub: every key of a session under one hash tag.

- ``adamhub:{<id>}:meta``: a hash, the session's record (``rev``, ``head``, ``t``, …)
- ``adamhub:{<id>}:c:<write id>:<vector>:<i>``: chunk ``i`` of a stored vector; in a
  session whose chunks are spread over a Redis Cluster, ``adamhub:{<id>:<i>}:c:…``
- ``adamhub:{<id>}:batches``, ``:batch:<id>``, ``:garbage``: a spread session's
  chunks being written and those to delete (``garbage.py``)
- ``adamhub:{<id>}:idem:<key>``: an idempotency record
- ``adamhub:{<id>}:idems``: the session's idempotency records, by expiry
- ``adamhub:{<id>}:log``, ``:snaps``, ``:round``: hashes the session scripts keep
  (``lua/common.lua``)
- ``adamhub:tenant:{<tenant>}:sessions``, ``:sizes``, ``:create:<key>``: a tenant's
  index of sessions, their sizes, its creates' Idempotency-Keys
- ``adamhub:{keys}:index``, ``:key:<sha256>``, ``:key-id:<id>``: the API keys

The hash tag ``{<id>}`` puts a session in one Redis Cluster slot, so one Lua script
can touch all its keys; only the chunks of a spread session are elsewhere, chunk ``i``
of every vector in the slot of ``{<id>:<i>}``, so that a big session's bytes go to
every primary.
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
    session_id: str,
    write_id: str,
    fields: Iterable[str],
    chunk_count: int,
    *,
    spread: bool = False,
) -> list[str]:
    """The keys of every chunk of ``fields`` in the version ``write_id``; ``spread``:
    each chunk index in a slot of its own (``lua/common.lua`` names them alike)."""
    if not spread:
        prefix = f"{session_prefix(session_id)}c:{write_id}:"
        return [f"{prefix}{name}:{i}" for name in fields for i in range(chunk_count)]
    return [
        f"adamhub:{{{session_id}:{i}}}:c:{write_id}:{name}:{i}"
        for name in fields
        for i in range(chunk_count)
    ]


# A spread session's chunks are beyond its slot, so its scripts cannot create or delete
# them: a write registers its chunks in a batch (in the session's slot) before writing
# them, the commit claims the batch, and what scripts retire goes to the garbage set, for
# the service to delete (``garbage.py``).
SPREAD_SESSIONS_KEY = "adamhub:spread"


def batches_key(session_id: str) -> str:
    """The sorted set of a spread session's batches being written, by start (ms)."""
    return f"{session_prefix(session_id)}batches"


def batch_key(session_id: str, batch_id: str) -> str:
    """The set of the chunk keys one write of a spread session is writing."""
    return f"{session_prefix(session_id)}batch:{batch_id}"


def garbage_key(session_id: str) -> str:
    """The set of a spread session's chunk keys that are no longer needed."""
    return f"{session_prefix(session_id)}garbage"


def session_of_meta(meta: str) -> str:
    """The session id in a meta key."""
    return meta[meta.index("{") + 1 : meta.rindex("}")]


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
