"""Store connections that wait when all are busy, instead of failing.

redis-py's asyncio clients refuse a command at once ("Too many connections",
``MaxConnectionsError``) when every connection of the pool, or of a cluster node, is in
use: a burst of requests past ``ADAMHUB_REDIS_MAX_CONNECTIONS`` (64 workers contributing
to one round at once) would each get a 503. Here such a command waits for a connection,
up to the store timeout, and only then fails as never sent (``errors.never_sent``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError

# The longest pause between a cluster command's tries for a busy node's connection.
_MAX_PAUSE_SECONDS = 0.02


def _gave_up(wait_seconds: float) -> MaxConnectionsError:
    return MaxConnectionsError(f"no store connection came free within {wait_seconds:g} s")


class WaitingConnectionPool(redis.ConnectionPool):
    """redis-py's asyncio pool, except that a command finding every connection busy
    waits (up to ``wait_seconds``) for one to come back. The pool's own path is untouched
    while a connection is free: redis-py's ``BlockingConnectionPool`` waits too, but
    costs every command a condition and a timer (15 µs of a 150 µs command, measured)."""

    wait_seconds: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        take: Any = super().get_connection  # untyped in redis-py
        try:
            return await take(*args, **kwargs)
        except MaxConnectionsError:
            pass  # every connection is busy: wait below (off the common path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._wake_one()  # a wake-up this waiter had but can no longer use
                raise _gave_up(self.wait_seconds)
            freed: asyncio.Future[None] = loop.create_future()
            self._waiters.append(freed)
            try:
                await asyncio.wait_for(freed, remaining)
            except TimeoutError:
                pass
            finally:
                if not freed.done():
                    self._waiters.remove(freed)
            with contextlib.suppress(MaxConnectionsError):
                return await take(*args, **kwargs)

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            freed = self._waiters.popleft()
            if not freed.done():
                freed.set_result(None)
                return


class WaitingRedisCluster(RedisCluster):
    """redis-py's asyncio cluster client, except that a command finding its node's
    connections all busy tries again, with growing pauses, for up to ``wait_seconds``.

    A node's pool is not pluggable and says nothing when a connection comes back, hence
    the pauses. Trying again is safe: the error comes before the command is sent, and
    redis-py raises it without touching the topology. Pipelines are left as they are (a
    pipeline over several nodes may have sent to one when another refuses); the stores'
    writes that must not be taken for unsent are single commands and single-slot
    transactions."""

    wait_seconds: float = 5.0

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except MaxConnectionsError:
            pass  # the node's connections are all busy: try again below
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        pause = 0.0005
        while loop.time() + pause <= deadline:
            await asyncio.sleep(pause)
            pause = min(2 * pause, _MAX_PAUSE_SECONDS)
            with contextlib.suppress(MaxConnectionsError):
                return await super().execute_command(*args, **kwargs)
        raise _gave_up(self.wait_seconds)
