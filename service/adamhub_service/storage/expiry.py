"""The index of the sessions that expire when idle (``expires_after_idle_seconds``),
which the janitor reads."""

from __future__ import annotations

import redis.asyncio as redis

from adamhub_service.storage.encoding import text
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keyspace import EXPIRING_KEY


class RedisExpiryRepository:
    """A set of session ids."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    async def track(self, session_id: str, *, expires: bool) -> None:
        """Put the session in (or take it out of) the index."""
        async with unavailable_on_error(write=True):
            if expires:
                await self._redis.sadd(EXPIRING_KEY, session_id)
            else:
                await self._redis.srem(EXPIRING_KEY, session_id)

    async def ids(self) -> list[str]:
        """The ids in the index."""
        async with unavailable_on_error():
            found = await self._redis.smembers(EXPIRING_KEY)
        return sorted(text(raw) for raw in found)
