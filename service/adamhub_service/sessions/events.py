"""A session's steps as they happen, for the live charts: the history points the
commits write, read as they are announced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import orjson

from adamhub_service.model.repositories import ScreenRepository, SessionRepository

# Points read at a time while catching up.
EVENTS_PER_READ = 1000


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A step (its t and history point, JSON), a rollback (to t), a refused gradient
    (``point``: the refusal, JSON), or a keep-alive."""

    kind: Literal["step", "rollback", "refusal", "keepalive"]
    t: int = 0
    point: bytes = b""


async def session_events(
    store: SessionRepository,
    session_id: str,
    after: int,
    *,
    seconds: float,
    keepalive_seconds: float,
    screening: ScreenRepository | None = None,
) -> AsyncIterator[SessionEvent]:
    """The events after step ``after``, for ``seconds`` (with ``screening``: the
    gradients refused from now on too)."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + seconds
    quiet_since = loop.time()
    refused_after = 0
    if screening is not None:
        newest = await screening.refusals(session_id, after_ms=None, limit=1)
        refused_after = _refusal_ms(newest[-1]) if newest else 0
    while loop.time() < ends:
        if screening is not None:
            for refusal in await screening.refusals(
                session_id, after_ms=refused_after, limit=EVENTS_PER_READ
            ):
                refused_after = _refusal_ms(refusal)
                yield SessionEvent("refusal", point=refusal)
        points = await store.history(session_id, after_t=after, limit=EVENTS_PER_READ)
        for point in points:
            t = int(orjson.loads(point)["t"])
            yield SessionEvent("step", t, point)
            after = t
        if points:
            quiet_since = loop.time()
            continue
        now_t = (await store.record(session_id)).t
        if now_t < after:  # rolled back, or reset
            after = now_t
            yield SessionEvent("rollback", now_t)
        if loop.time() - quiet_since >= keepalive_seconds:
            quiet_since = loop.time()
            yield SessionEvent("keepalive")
        await store.notified(session_id, keepalive_seconds)


def _refusal_ms(refusal: bytes) -> int:
    return round(float(orjson.loads(refusal)["time"]) * 1000)
