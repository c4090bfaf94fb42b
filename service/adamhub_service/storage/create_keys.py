"""The Idempotency-Keys of session creates, per tenant: a retried create finds the
session the first one made."""

from __future__ import annotations

import redis.asyncio as redis

from adamhub_service.storage.encoding import text
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keyspace import create_idempotency_key


class RedisCreateKeyRepository:
    """What each create's Idempotency-Key recorded: ``<session id>:<request digest>``."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    async def claim(self, tenant: str, key: str, value: str, ttl_ms: int) -> str:
        """Record ``value`` for the key unless one is recorded; return what is recorded."""
        name = create_idempotency_key(tenant, key)
        async with unavailable_on_error(write=True), self._redis.pipeline() as pipe:
            pipe.set(name, value, nx=True, px=ttl_ms)
            pipe.get(name)
            _, recorded = await pipe.execute()
        return text(recorded)
