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
        # TIME is not sent in a cluster's pipelines: the script reads it beside the rest.
        self._view = register(client, "screen_view")

    async def look(self, session_id: str, worker: str, window: int) -> ScreenView:
        """The worker's quarantine (if any), the store's clock and the newest ``window``
        accepted norms."""
        record, norms, now_ms = await self._read(session_id, window)
        until = record.get(f"q:{worker}")
        quarantined = None if until is None or until <= now_ms else until
        return ScreenView(quarantined, now_ms, [float(norm) for norm in norms])

    async def _read(self, session_id: str, window: int) -> tuple[dict[str, int], list[bytes], int]:
        """The screening hash, the newest ``window`` norms, and the store's clock (ms)."""
        keys = [screen_key(session_id), norms_key(session_id)]
        async with unavailable_on_error():
            flat, norms, (seconds, micros) = await self._view(keys=keys, args=[window])
        record = {text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        return record, norms, int(seconds) * 1000 + int(micros) // 1000

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
        record, _, now_ms = await self._read(session_id, 0)
        return {
            field[2:]: until / 1000
            for field, until in record.items()
            if field.startswith("q:") and until > now_ms
        }

    async def refusals(self, session_id: str, *, after_ms: int | None, limit: int) -> list[bytes]:
        """Up to ``limit`` refusals (JSON), oldest first: those after ``after_ms``, or
        the newest."""
        return await newest_or_after(
            self._redis, refusals_key(session_id), after=after_ms, limit=limit
        )
