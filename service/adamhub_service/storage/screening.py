"""A session's screening record in Redis: the norms of its newest accepted gradients,
each worker's refusals in a row and quarantine, and the refusals themselves; all in the
session's slot."""

from __future__ import annotations

import redis.asyncio as redis

from adamhub_service.model.stored import ScreenView
from adamhub_service.storage.encoding import text
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keyspace import norms_key, refusals_key, screen_key
from adamhub_service.storage.scripts import register
from adamhub_service.storage.series import newest_or_after

# Refusals kept per session (for the history and the dashboard).
REFUSALS_KEPT = 1000


class RedisScreenRepository:
    """Screening records of sessions."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._refuse = register(client, "refuse")

    async def look(self, session_id: str, worker: str, window: int) -> ScreenView:
        """The worker's quarantine (if any), the store's clock and the newest ``window``
        accepted norms."""
        async with unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(screen_key(session_id), f"q:{worker}")
            pipe.lrange(norms_key(session_id), 0, window - 1)
            pipe.time()
            until, norms, (seconds, micros) = await pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        quarantined = None if until is None or int(until) <= now_ms else int(until)
        return ScreenView(quarantined, now_ms, [float(norm) for norm in norms])

    async def refuse(
        self,
        session_id: str,
        worker: str,
        event: str,
        *,
        quarantine_after: int,
        quarantine_ms: int,
    ) -> int | None:
        """Count a refusal (``event``: JSON) of the worker; when it quarantines the
        worker, until when (ms)."""
        keys = [screen_key(session_id), refusals_key(session_id)]
        args: list[str | int] = [worker, quarantine_after, quarantine_ms, event, REFUSALS_KEPT]
        async with unavailable_on_error(write=True):
            until, _ = await self._refuse(keys=keys, args=args)
        return int(until) or None

    async def accept(self, session_id: str, worker: str, norm: float, window: int) -> None:
        """Count an accepted gradient's norm, and end the worker's refusals in a row."""
        async with (
            unavailable_on_error(write=True),
            self._redis.pipeline(transaction=False) as pipe,
        ):
            pipe.hdel(screen_key(session_id), f"r:{worker}")
            pipe.lpush(norms_key(session_id), repr(norm))
            pipe.ltrim(norms_key(session_id), 0, window - 1)
            await pipe.execute()

    async def release(self, session_id: str, worker: str) -> None:
        """End a worker's quarantine and its refusals in a row."""
        async with unavailable_on_error(write=True):
            await self._redis.hdel(screen_key(session_id), f"q:{worker}", f"r:{worker}")

    async def quarantined(self, session_id: str) -> dict[str, float]:
        """The workers in quarantine now, and until when (Unix seconds)."""
        async with unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(screen_key(session_id))
            pipe.time()
            record, (seconds, micros) = await pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return {
            text(field)[2:]: int(until) / 1000
            for field, until in record.items()
            if text(field).startswith("q:") and int(until) > now_ms
        }

    async def refusals(self, session_id: str, *, after_ms: int | None, limit: int) -> list[bytes]:
        """Up to ``limit`` refusals (JSON), oldest first: those after ``after_ms``, or
        the newest."""
        return await newest_or_after(
            self._redis, refusals_key(session_id), after=after_ms, limit=limit
        )
