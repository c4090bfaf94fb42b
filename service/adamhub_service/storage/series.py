"""Reading a sorted set that holds a series by score (history points by t, refusals by
time): the newest, or those after a score, oldest first."""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis

from adamhub_service.storage.errors import unavailable_on_error


async def newest_or_after(
    client: redis.Redis, key: str, *, after: int | None, limit: int
) -> list[bytes]:
    """Up to ``limit`` members, oldest first: those scored after ``after``, or the
    newest when it is None."""
    async with unavailable_on_error():
        if after is None:
            found: Any = await client.zrange(key, -limit, -1)
        else:
            found = await client.zrangebyscore(key, f"({after}", "+inf", start=0, num=limit)
    return list(found)
