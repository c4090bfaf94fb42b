"""Keys stored under the names of earlier versions, moved to today's.

The tenant keys and the API keys now carry a hash tag (``{<tenant>}``, ``{keys}``) so
that each script or transaction on them touches one Redis Cluster slot. A store
written by an earlier version (a single Redis: a cluster starts empty) has them under
their old names: every process moves them when it starts, before it serves. ``RENAMENX``
is atomic, so processes starting at once move each key once; a key whose new name is
taken already stays where it is, and is logged.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis
from redis.exceptions import ResponseError

from adamhub_service.errors import StoreUnavailable
from adamhub_service.storage.encoding import text
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keyspace import (
    API_KEYS_INDEX,
    api_key_id_key,
    api_key_key,
    tenant_index_key,
    tenant_prefix,
)

logger = logging.getLogger("adamhub.storage")

_OLD_TENANT = "adamhub:tenant:"
_OLD_KEY = "adamhub:key:"
_OLD_KEY_ID = "adamhub:key-id:"


def new_name(old: str) -> str | None:
    """Today's name of a key stored under an earlier version's ``old`` name (None: it is
    not such a key)."""
    if old == "adamhub:sessions":  # the default tenant's index, 0.1.0
        return tenant_index_key("default")
    if old == "adamhub:keys":
        return API_KEYS_INDEX
    if old.startswith(_OLD_KEY):
        return api_key_key(old[len(_OLD_KEY) :])
    if old.startswith(_OLD_KEY_ID):
        return api_key_id_key(old[len(_OLD_KEY_ID) :])
    if old.startswith(_OLD_TENANT) and not old.startswith(_OLD_TENANT + "{"):
        tenant, _, rest = old[len(_OLD_TENANT) :].partition(":")
        return f"{tenant_prefix(tenant)}{rest}" if rest else None
    return None


async def move_old_keys(client: redis.Redis) -> int:
    """Move every key stored under an earlier version's name to today's; how many."""
    moved = 0
    async with unavailable_on_error(write=True):
        for pattern in ("adamhub:sessions", "adamhub:keys", "adamhub:key:*", "adamhub:key-id:*",
                        "adamhub:tenant:*"):  # fmt: skip
            async for raw in client.scan_iter(match=pattern, count=1000):
                old = text(raw)
                new = new_name(old)
                if new is None:
                    continue
                try:
                    renamed = await client.renamenx(old, new)
                except ResponseError:
                    continue  # moved meanwhile by another process
                if renamed:
                    moved += 1
                else:
                    logger.warning("%s stays under its old name: %s exists already", old, new)
    if moved:
        logger.info("moved %d keys to their hash-tagged names", moved)
    return moved


async def move_old_keys_once_reachable(client: redis.Redis, *, every_seconds: float = 1.0) -> None:
    """``move_old_keys``, tried again every ``every_seconds`` while the store does not
    answer (a process starts, and serves its 503s, while its store is down)."""
    while True:
        try:
            await move_old_keys(client)
            return
        except StoreUnavailable:
            await asyncio.sleep(every_seconds)
