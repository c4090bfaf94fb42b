"""The chunks of spread sessions, which their scripts cannot reach: registered before
they are written, deleted once retired or never committed.

On a Redis Cluster a big session's chunks are spread over slots, chunk ``i`` of every
vector in the slot of ``{<id>:<i>}`` (``keyspace.chunk_keys``), so that its bytes go to
every primary. A script runs in the session's slot only, so:

- a write first registers its chunk keys as a batch in the session's slot
  (``lua/pend.lua``), then writes them (no TTL), then commits: the commit claims the
  batch (``persist`` in ``lua/common.lua``); a batch older than the pending-write TTL
  is swept (``lua/sweep.lua``) and its chunks deleted, and a commit can no longer claim
  it. So a chunk is never lost once committed, and never kept when its write died.
- what a script retires (log entries behind a snapshot, a closed round's gradients, a
  deleted session's everything) goes to the session's garbage set; the service deletes
  those chunks right after the write, and a periodic sweep of every spread session
  (``SPREAD_SESSIONS_KEY``) finishes what a dead process left.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from adamhub_service.errors import OutcomeUnknown, StoreUnavailable
from adamhub_service.model.records import new_write_id
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keyspace import (
    SPREAD_SESSIONS_KEY,
    batch_key,
    batches_key,
    garbage_key,
    meta_key,
)
from adamhub_service.storage.scripts import register

# Chunk keys handed over by one sweep call, and unlinked per round trip.
_KEYS_PER_CALL = 1000


class ChunkGarbage:
    """Batches of spread chunks being written, and the deletion of retired ones."""

    def __init__(self, client: redis.Redis, *, pending_write_ttl_ms: int) -> None:
        self._redis = client
        self._ttl_ms = pending_write_ttl_ms
        self._pend = register(client, "pend")
        self._sweep = register(client, "sweep")

    async def register(self, session_id: str, keys: Sequence[str]) -> str:
        """A new batch of ``keys`` (to be written next), the session noted for sweeps;
        ``StoreUnavailable`` when the store did not take it (nothing is written then)."""
        batch = batch_key(session_id, new_write_id())
        async with unavailable_on_error():
            await asyncio.gather(
                self._pend(keys=[batches_key(session_id), batch], args=list(keys)),
                self._redis.zadd(SPREAD_SESSIONS_KEY, {session_id: time.time() * 1000}),
            )
        return batch

    async def abandon(self, session_id: str, batch: str, keys: Sequence[str]) -> None:
        """Delete the chunks of a write that surely did not commit, then its batch (best
        effort: a sweep does it otherwise)."""
        with contextlib.suppress(RedisError, OSError, StoreUnavailable):
            await self._unlink(keys)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.execute_command("DEL", batch)
                pipe.zrem(batches_key(session_id), batch)
                await pipe.execute()

    async def collect(self, session_id: str) -> bool:
        """Delete the chunks in the session's garbage, and those of its batches past
        the TTL; whether the session, or a batch of it, still exists."""
        while True:
            async with unavailable_on_error():
                live, keys = await self._sweep(
                    keys=[meta_key(session_id)], args=[self._ttl_ms, _KEYS_PER_CALL]
                )
            if not keys:
                return bool(live)
            await self._unlink(keys)
            async with unavailable_on_error():
                await self._redis.srem(garbage_key(session_id), *keys)

    async def sweep(self) -> int:
        """Collect every spread session's garbage; forget the sessions deleted for good
        (and not written for twice the TTL). How many sessions were looked at."""
        now = time.time() * 1000
        async with unavailable_on_error():
            noted = await self._redis.zrange(SPREAD_SESSIONS_KEY, 0, -1, withscores=True)
        for raw, last_write in cast(list[tuple[bytes, float]], noted):
            session_id = raw.decode()
            if not await self.collect(session_id) and last_write < now - 2 * self._ttl_ms:
                async with unavailable_on_error():
                    await self._redis.zrem(SPREAD_SESSIONS_KEY, session_id)
        return len(noted)

    async def run(self, every_seconds: float) -> None:
        """Sweep until cancelled; a sweep that fails is tried again at the next."""
        while True:
            await asyncio.sleep(every_seconds)
            with contextlib.suppress(StoreUnavailable, OutcomeUnknown):
                await self.sweep()

    async def _unlink(self, keys: Sequence[str]) -> None:
        # One UNLINK per key: a cluster pipeline sends each node its own, in parallel.
        for first in range(0, len(keys), _KEYS_PER_CALL):
            async with unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
                for key in keys[first : first + _KEYS_PER_CALL]:
                    pipe.execute_command("UNLINK", key)
                await pipe.execute()
