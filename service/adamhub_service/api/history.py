"""``/v1/sessions/{id}/history`` and ``…/events``: what each step recorded, for charts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from adamhub_service.api import openapi
from adamhub_service.api.auth import PrincipalDep
from adamhub_service.api.deps import ServicesDep, SessionId
from adamhub_service.api.negotiation import JSON
from adamhub_service.api.parameters import SingleValuedQuery
from adamhub_service.api.schemas import MAX_STEP, HistoryOut
from adamhub_service.model.settings import MAX_HISTORY_POINTS

router = APIRouter(prefix="/v1", tags=["history"], dependencies=[SingleValuedQuery])

EVENT_STREAM = "text/event-stream"
# An idle stream sends a comment this often (proxies close silent connections), and
# ends after STREAM_SECONDS (or ADAMHUB_MAX_WAIT_SECONDS, if shorter): the client
# reconnects with Last-Event-ID, and a service shutting down is not held by its streams.
KEEPALIVE_SECONDS = 15.0
STREAM_SECONDS = 300.0


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
    points = await services.sessions.history(session_id, caller, after_t=after_t, limit=limit)
    refusals, quarantined = await services.sessions.screening(session_id, caller, limit=limit)
    body = b'{"points":[%s],"refusals":[%s],"quarantined":%s}' % (
        b",".join(points),
        b",".join(refusals),
        orjson.dumps(quarantined),
    )
    return Response(body, media_type=JSON)


@router.get(
    "/sessions/{session_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events: `event: step`, `id: <t>`, `data: <point>` "
            'per step, as `…/history` gives them; `event: rollback` with `{"t"}` when '
            "the session goes back; `event: refusal` with the refusal, as `…/history` "
            "gives them, when screening refuses a gradient. Resumes after `Last-Event-ID`.",
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
    resume = last_event_id.strip() if last_event_id is not None else ""
    events = await services.sessions.events(
        session_id,
        caller,
        last_event_id=int(resume) if resume.isdigit() else None,
        seconds=min(STREAM_SECONDS, services.settings.max_wait_seconds),
        keepalive_seconds=KEEPALIVE_SECONDS,
    )

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        async for event in events:
            if await request.is_disconnected():
                return
            if event.kind == "step":
                yield b"id: %d\nevent: step\ndata: %s\n\n" % (event.t, event.point)
            elif event.kind == "refusal":
                yield b"event: refusal\ndata: %s\n\n" % event.point
            elif event.kind == "rollback":
                yield b'id: %d\nevent: rollback\ndata: {"t":%d}\n\n' % (event.t, event.t)
            else:
                yield b": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
