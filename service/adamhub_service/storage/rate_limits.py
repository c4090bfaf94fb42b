"""Token buckets per API key, counted in Redis (``lua/rate.lua``) so that every replica
shares them."""

from __future__ import annotations

import redis.asyncio as redis

from adamhub_service.model.stored import RateDecision
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keyspace import rate_key
from adamhub_service.storage.scripts import register


class RedisRateRepository:
    """One token bucket per key."""

    def __init__(self, client: redis.Redis) -> None:
        self._rate = register(client, "rate")

    async def take_token(self, key_id: str, *, rate: float, burst: int) -> RateDecision:
        """Take a token from the key's bucket."""
        async with unavailable_on_error():
            allowed, remaining, wait = await self._rate(keys=[rate_key(key_id)], args=[rate, burst])
        return RateDecision(int(allowed) == 1, float(remaining), float(wait))
