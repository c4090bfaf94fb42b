"""News of sessions' steps, for requests that wait for one (long-polls).

The session scripts publish a session's new t on ``adamhub:{<id>}:t`` (``common.lua``);
one subscription per process, on the pattern, wakes the requests waiting on that
session, whichever replica committed. A waiter also re-reads the record at least once a
second, so a lost message or a store restart costs at most that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping

import redis.asyncio as redis
from redis.exceptions import RedisError

from adamhub_service.model.records import SessionRecord
from adamhub_service.model.stored import Wake
from adamhub_service.storage.encoding import text

CHANNEL_PATTERN = "adamhub:{*}:t"
RECHECK_SECONDS = 1.0
# The newest t heard of is kept for this many sessions (the most recent).
KEEP_LATEST = 10_000
logger = logging.getLogger("adamhub.storage")


class StepNotifier:
    """Wakes the waiters of a session when one of its steps is published."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._waiters: dict[str, set[Wake]] = {}
        self._listener: asyncio.Task[None] | None = None
        # The newest t each session was heard to reach: a waiter that comes after the
        # news need not sleep through it.
        self._latest: OrderedDict[str, int] = OrderedDict()

    def changed(
        self, session_id: str, record: SessionRecord | None = None, t: int | None = None
    ) -> None:
        """Wake the waiters of ``session_id``: a commit of this process (``record``, the
        committed record), or news from the store (its ``t``)."""
        reached = record.t if record is not None else t
        if reached is not None:
            self._latest.pop(session_id, None)
            self._latest[session_id] = reached
            if len(self._latest) > KEEP_LATEST:
                self._latest.popitem(last=False)
        for waiter in self._waiters.get(session_id, ()):
            waiter.news = True
            if record is not None and (waiter.record is None or record.rev > waiter.record.rev):
                waiter.record = record
            waiter.event.set()

    async def wait(self, session_id: str, seconds: float) -> Wake:
        """Return when the session may have changed, or after ``seconds`` (at most a
        second) without news."""
        with self.watch(session_id) as watch:
            return await watch.wait(seconds)

    def watch(self, session_id: str) -> Watch:
        """News of ``session_id`` for a caller that waits more than once: news that
        comes between two waits (while it looks at the store) wakes the next."""
        self._ensure_listening()
        return Watch(self._waiters, self._latest, session_id)

    async def close(self) -> None:
        """Stop listening."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    def _ensure_listening(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(CHANNEL_PATTERN)
            async for message in pubsub.listen():
                channel = text(message["channel"])
                # adamhub:{<id>}:t
                data = text(message["data"])
                t = int(data) if data.isdigit() else None
                self.changed(channel[len("adamhub:{") : -len("}:t")], t=t)
        except (RedisError, OSError) as exc:
            # Waiters fall back to re-reading each second; the next wait listens again.
            logger.warning("step notifications stopped: %s", exc)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()


class Watch:
    """A session's news, kept from ``with`` on: each ``wait`` returns at once when news
    came since the last one ended."""

    def __init__(
        self, waiters: dict[str, set[Wake]], latest: Mapping[str, int], session_id: str
    ) -> None:
        self._waiters = waiters
        self._latest = latest
        self._session_id = session_id
        self._heard = -1
        self._wake = Wake()

    def __enter__(self) -> Watch:
        self._waiters.setdefault(self._session_id, set()).add(self._wake)
        return self

    def __exit__(self, *exc: object) -> None:
        waiters = self._waiters[self._session_id]
        waiters.discard(self._wake)
        if not waiters:
            del self._waiters[self._session_id]

    async def wait(self, seconds: float, *, until_step: int | None = None) -> Wake:
        """Return when the session may have changed since the last wait (with the record,
        when this process's commit made it), or after ``seconds`` (at most a second);
        at once, as news, when it was heard to reach ``until_step`` already."""
        wake = self._wake
        heard = self._latest.get(self._session_id, -1)
        if until_step is not None and heard >= until_step and heard != self._heard:
            self._heard = heard  # once: a rollback since may have taken it back
            wake.news = True
        elif not wake.event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.event.wait(), timeout=min(seconds, RECHECK_SECONDS))
        # What came is the caller's; news from now on goes to the next wait.
        waiters = self._waiters[self._session_id]
        waiters.discard(wake)
        self._wake = Wake()
        waiters.add(self._wake)
        return wake
