"""``/v1/sessions``: create, list, read, change and delete sessions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from adamhub_service.api import openapi
from adamhub_service.api.bodies import json_model
from adamhub_service.api.deps import ServicesDep, SessionId
from adamhub_service.api.negotiation import JSON
from adamhub_service.api.schemas import (
    SessionCreate,
    SessionList,
    SessionOut,
    SessionPatch,
    render,
)
from adamhub_service.sessions.service import SessionChanges

router = APIRouter(prefix="/v1", tags=["sessions"])


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionOut,
    responses={201: {"headers": openapi.LOCATION_HEADER}, **openapi.problems(413, 415, 422)},
    openapi_extra=openapi.json_body(SessionCreate),
    summary="Create a session",
)
async def create_session(request: Request, services: ServicesDep) -> Response:
    """Create a session from `params`, or from `size` with an optional `init`."""
    spec = await json_model(request, SessionCreate, services.settings.max_body_bytes)
    record = await services.sessions.create(spec.new_session())
    return Response(
        render(SessionOut.of(record)),
        status_code=201,
        media_type=JSON,
        headers={"Location": f"/v1/sessions/{record.id}"},
    )


@router.get(
    "/sessions",
    response_model=SessionList,
    responses=openapi.problems(422),
    summary="List sessions",
)
async def list_sessions(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> Response:
    """The sessions, oldest first, a page at a time."""
    records, next_cursor = await services.sessions.list(after=cursor, limit=limit)
    page = SessionList.model_construct(
        sessions=[SessionOut.of(record) for record in records], next_cursor=next_cursor
    )
    return Response(render(page), media_type=JSON)


@router.get(
    "/sessions/{session_id}",
    response_model=SessionOut,
    responses=openapi.problems(404),
    summary="Get a session",
)
async def get_session(session_id: SessionId, services: ServicesDep) -> Response:
    """One session's settings and step counter."""
    return Response(render(SessionOut.of(await services.sessions.get(session_id))), media_type=JSON)


@router.patch(
    "/sessions/{session_id}",
    response_model=SessionOut,
    responses=openapi.problems(404, 409, 413, 415, 422),
    openapi_extra=openapi.json_body(SessionPatch),
    summary="Change a session's settings",
)
async def patch_session(session_id: SessionId, request: Request, services: ServicesDep) -> Response:
    """Change optimizer settings for the steps that follow, the name, or the metadata."""
    patch = await json_model(request, SessionPatch, services.settings.max_body_bytes)
    given = patch.model_fields_set
    changes = SessionChanges(
        optimizer=patch.optimizer.changes() if patch.optimizer else {},
        name=patch.name,
        rename="name" in given,
        metadata=(patch.metadata or {}) if "metadata" in given else None,
    )
    record = await services.sessions.update(session_id, changes)
    return Response(render(SessionOut.of(record)), media_type=JSON)


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    responses={204: {"description": "Deleted."}, **openapi.problems(404, 409)},
    summary="Delete a session",
)
async def delete_session(session_id: SessionId, services: ServicesDep) -> Response:
    """Delete the session and all its state."""
    await services.sessions.delete(session_id)
    return Response(status_code=204)
