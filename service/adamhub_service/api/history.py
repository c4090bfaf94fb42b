"""``/v1/sessions/{id}/history`` and ``…/events``: what each step recorded, for charts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from adamhub_service.api import openapi
from adamhub_service.api.auth import PrincipalDep
from adamhub_service.api.deps import ServicesDep, SessionId
from adamhub_service.api.negotiation import JSON
from adamhub_service.api.schemas import MAX_STEP, HistoryOut
from adamhub_service.observability.history import MAX_HISTORY_POINTS

router = APIRouter(prefix="/v1", tags=["history"])

EVENT_STREAM = "text/event-stream"
# An idle stream sends a comment this often (proxies close silent connections), and
# ends after STREAM_SECONDS (or ADAMHUB_MAX_WAIT_SECONDS, if shorter): the client
# reconnects with Last-Event-ID, and a service shutting down is not held by its streams.
KEEPALIVE_SECONDS = 15.0
STREAM_SECONDS = 300.0
EVENTS_PER_READ = 1000


@router.get(
    "/sessions/{session_id}/history",
    response_model=HistoryOut,
    responses=openapi.problems(404, 422),
    summary="The points of the newest steps",
)
async def history(
    session_id: SessionId,
    services: ServicesDep,
    caller: PrincipalDep,
    after_t: Annotated[
        int | None,
        Query(ge=0, le=MAX_STEP, description="Only the steps after this one, oldest first."),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_HISTORY_POINTS, description="At most this many points.")
    ] = 1000,
) -> Response:
    """Per step: t, time (Unix seconds), the learning rate used, the gradient's and the
    update's L2 norms, the loss the worker reported, staleness and worker. Without
    `after_t`, the newest `limit` points; all oldest first."""
    await services.sessions.get(session_id, caller, "sessions.read", fresh=False)
    points = await services.store.history(session_id, after_t=after_t, limit=limit)
    return Response(b'{"points":[' + b",".join(points) + b"]}", media_type=JSON)


@router.get(
    "/sessions/{session_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events: `event: step`, `id: <t>`, `data: <point>` "
            'per step, as `…/history` gives them; `event: rollback` with `{"t"}` when '
            "the session goes back. Resumes after `Last-Event-ID`.",
            "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
        },
        **openapi.problems(404, 422),
    },
    summary="A live stream of the steps",
)
async def events(
    session_id: SessionId,
    request: Request,
    services: ServicesDep,
    caller: PrincipalDep,
    last_event_id: Annotated[
        str | None, Header(description="The t of the last event received: resume after it.")
    ] = None,
) -> StreamingResponse:
    """One event per step from now on (or after `Last-Event-ID`)."""
    record = await services.sessions.get(session_id, caller, "sessions.read")
    after = record.t
    if last_event_id is not None and last_event_id.strip().isdigit():
        after = min(int(last_event_id.strip()), record.t)
    store = services.store

    async def stream() -> AsyncIterator[bytes]:
        nonlocal after
        loop = asyncio.get_running_loop()
        ends = loop.time() + min(STREAM_SECONDS, services.settings.max_wait_seconds)
        quiet_since = loop.time()
        yield b"retry: 1000\n\n"
        while loop.time() < ends and not await request.is_disconnected():
            points = await store.history(session_id, after_t=after, limit=EVENTS_PER_READ)
            for point in points:
                t = orjson.loads(point)["t"]
                yield b"id: %d\nevent: step\ndata: %s\n\n" % (t, point)
                after = t
            if points:
                quiet_since = loop.time()
                continue
            now_t = (await store.record(session_id)).t
            if now_t < after:  # rolled back, or reset
                after = now_t
                yield b'id: %d\nevent: rollback\ndata: {"t":%d}\n\n' % (now_t, now_t)
            if loop.time() - quiet_since >= KEEPALIVE_SECONDS:
                quiet_since = loop.time()
                yield b": keep-alive\n\n"
            await store.notified(session_id, KEEPALIVE_SECONDS)

    return StreamingResponse(
        stream(),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
