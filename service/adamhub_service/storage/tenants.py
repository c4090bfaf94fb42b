"""Each tenant's index of its sessions and their sizes: the quota counters
(``lua/reserve.lua``), shared by every replica."""

from __future__ import annotations

import redis.asyncio as redis

from adamhub_service.model.records import SessionRecord
from adamhub_service.model.stored import QuotaRefusal
from adamhub_service.storage.encoding import text
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keyspace import tenant_index_key, tenant_sizes_key
from adamhub_service.storage.scripts import register


class RedisTenantRepository:
    """A tenant's session ids (in creation order) and their sizes."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._reserve = register(client, "reserve")
        self._resize = register(client, "resize")

    async def reserve(
        self, record: SessionRecord, *, max_sessions: int, max_parameters: int
    ) -> QuotaRefusal | None:
        """Index a new session in its tenant's quota; a refusal when over a limit."""
        keys = [tenant_index_key(record.tenant), tenant_sizes_key(record.tenant)]
        async with unavailable_on_error(write=True):
            reply = await self._reserve(
                keys=keys, args=[record.id, record.size, max_sessions, max_parameters]
            )
        if int(reply[0]) == 1:
            return None
        return QuotaRefusal(text(reply[1]), int(reply[2]))

    async def resize(self, record: SessionRecord, *, max_parameters: int) -> QuotaRefusal | None:
        """Count the session at ``record.size`` in its tenant's quota; a refusal when the
        tenant would pass its parameter limit."""
        async with unavailable_on_error(write=True):
            reply = await self._resize(
                keys=[tenant_sizes_key(record.tenant)],
                args=[record.id, record.size, max_parameters],
            )
        if int(reply[0]) == 1:
            return None
        return QuotaRefusal(text(reply[1]), int(reply[2]))

    async def release(self, tenant: str, session_id: str) -> None:
        """Take a session out of its tenant's index and quota."""
        async with unavailable_on_error(write=True), self._redis.pipeline() as pipe:
            pipe.zrem(tenant_index_key(tenant), session_id)
            pipe.hdel(tenant_sizes_key(tenant), session_id)
            await pipe.execute()

    async def ids(self, tenant: str, *, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` of the tenant's session ids in creation order, after ``after``."""
        start = b"-" if after is None else b"(" + after.encode()
        async with unavailable_on_error():
            found = await self._redis.zrangebylex(
                tenant_index_key(tenant), start, b"+", start=0, num=limit
            )
        return [text(raw) for raw in found]
