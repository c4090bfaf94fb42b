"""``/v1/sessions``: create, list, read, change and delete sessions."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from adamhub_service.api import openapi
from adamhub_service.api.auth import PrincipalDep
from adamhub_service.api.bodies import declared_length, json_model, read_body, validate
from adamhub_service.api.deps import ServicesDep, SessionId
from adamhub_service.api.negotiation import JSON, body_kind
from adamhub_service.api.parameters import IdempotencyKeyHeader, SingleValuedQuery
from adamhub_service.api.rendering import created_response
from adamhub_service.api.schemas import (
    ParamGroupIn,
    RollbackIn,
    SessionCreate,
    SessionList,
    SessionOut,
    SessionPatch,
    render,
)
from adamhub_service.model.records import SESSION_ID_PATTERN
from adamhub_service.model.settings import MAX_TAGS, Tag
from adamhub_service.sessions.service import SessionChanges
from adamhub_service.steps.idempotency import checked_key

router = APIRouter(prefix="/v1", tags=["sessions"], dependencies=[SingleValuedQuery])
SESSION_ID_REGEX = SESSION_ID_PATTERN.pattern

# Parsing JSON takes several times the body's bytes of memory while it lasts.
JSON_EXPANSION = 8


def json_body_bytes(request: Request, limit: int) -> int:
    """What reading and parsing a JSON body of at most ``limit`` bytes holds."""
    return min(declared_length(request) or limit, limit) * JSON_EXPANSION


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionOut,
    responses={
        201: {"headers": {**openapi.LOCATION_HEADER, **openapi.REPLAYED_HEADERS}},
        **openapi.problems(408, 413, 415, 422),
    },
    openapi_extra=openapi.json_body(SessionCreate),
    summary="Create a session",
)
async def create_session(
    request: Request,
    services: ServicesDep,
    caller: PrincipalDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create a session from `params`, or from `size` with an optional `init`.

    With an `Idempotency-Key`, a retry of the same request answers the session the
    first one created (`Idempotent-Replayed: true`).
    """
    idempotency_key = checked_key(idempotency_key)
    settings = services.settings
    body_kind(request.headers.get("content-type"))
    async with services.budget.hold(json_body_bytes(request, settings.max_json_bytes)):
        body = await read_body(
            request, limit=settings.max_json_bytes, stall_seconds=settings.body_timeout_seconds
        )
        spec = validate(SessionCreate, body)
    new = spec.new_session()
    # The initial θ, m, v (and max v) are made in memory before they are stored.
    vectors = 4 if new.optimizer.amsgrad else 3
    size = int((new.size if new.params is None else new.params.size) or 0)
    # A size over the maximum is refused by the domain without allocating anything.
    state_bytes = size * np.dtype(new.dtype).itemsize * vectors if size <= settings.max_size else 0
    async with services.budget.hold(state_bytes):
        created = await services.sessions.create(
            new,
            caller,
            idempotency_key=idempotency_key,
            request_digest=hashlib.blake2b(body, digest_size=16).hexdigest(),
        )
    return created_response(created)


@router.get(
    "/sessions",
    response_model=SessionList,
    responses=openapi.problems(422),
    summary="List sessions",
)
async def list_sessions(
    services: ServicesDep,
    caller: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None,
        Query(description="`next_cursor` of the previous page", pattern=SESSION_ID_REGEX),
    ] = None,
    name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="Only sessions whose name contains this, or matches it as a glob "
            "(`*`, `?`, `[…]`); case-insensitive.",
        ),
    ] = None,
    order: Annotated[
        Literal["created_at", "-created_at", "updated_at", "-updated_at"],
        Query(description="The order of the list; `-` for newest first."),
    ] = "created_at",
    tag: Annotated[
        list[Tag] | None,
        Query(
            max_length=MAX_TAGS,
            description="Only sessions having this tag (repeat: every one of them).",
        ),
    ] = None,
) -> Response:
    """The caller's sessions, oldest first (or in `order`), a page at a time."""
    records, next_cursor = await services.sessions.list(
        caller, after=cursor, limit=limit, name=name, order=order, tags=tag or ()
    )
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
async def get_session(
    session_id: SessionId, services: ServicesDep, caller: PrincipalDep
) -> Response:
    """One session's settings and step counter."""
    record = await services.sessions.get(session_id, caller, "sessions.read")
    return Response(render(SessionOut.of(record)), media_type=JSON)


@router.patch(
    "/sessions/{session_id}",
    response_model=SessionOut,
    responses=openapi.problems(404, 408, 409, 413, 415, 422),
    openapi_extra=openapi.json_body(SessionPatch),
    summary="Change a session's settings",
)
async def patch_session(
    session_id: SessionId, request: Request, services: ServicesDep, caller: PrincipalDep
) -> Response:
    """Change optimizer settings for the steps that follow, the name, or the metadata."""
    settings = services.settings
    await services.sessions.get(session_id, caller, "sessions.update", fresh=False)
    patch = await json_model(
        request,
        SessionPatch,
        limit=settings.max_json_bytes,
        stall_seconds=settings.body_timeout_seconds,
    )
    changes = SessionChanges(
        optimizer=patch.optimizer.changes() if patch.optimizer else {},
        param_groups=None
        if patch.param_groups is None
        else [group.model_dump(exclude_none=True) for group in patch.param_groups],
        settings=patch.settings_changes(),
    )
    record = await services.sessions.update(session_id, changes, caller)
    return Response(render(SessionOut.of(record)), media_type=JSON)


@router.post(
    "/sessions/{session_id}/param_groups",
    response_model=SessionOut,
    responses=openapi.problems(404, 408, 409, 413, 415, 422),
    openapi_extra=openapi.json_body(ParamGroupIn),
    summary="Add a param group",
)
async def add_param_group(
    session_id: SessionId, request: Request, services: ServicesDep, caller: PrincipalDep
) -> Response:
    """Append parameters as a new param group, as torch's `add_param_group`: their
    moments start at zero and their step counts at 0; the session's size grows (within
    the tenant's quota). A worker stepping with the old size is answered 409
    `size-changed`. The session cannot be rolled back past this."""
    settings = services.settings
    record = await services.sessions.get(session_id, caller, "sessions.update", fresh=False)
    async with services.budget.hold(json_body_bytes(request, settings.max_json_bytes)):
        body = await json_model(
            request,
            ParamGroupIn,
            limit=settings.max_json_bytes,
            stall_seconds=settings.body_timeout_seconds,
        )
        group = body.new_group(record.dtype)
    # The state read and the grown one are in memory at once.
    size = record.size + int(group.params.size)
    vectors = 4 if record.optimizer.amsgrad else 3
    state_bytes = size * np.dtype(record.dtype).itemsize * vectors * 2
    async with services.budget.hold(state_bytes if size <= settings.max_size else 0):
        grown = await services.sessions.add_param_group(session_id, group, caller)
    return Response(render(SessionOut.of(grown)), media_type=JSON)


@router.post(
    "/sessions/{session_id}/rollback",
    response_model=SessionOut,
    responses=openapi.problems(404, 408, 409, 413, 415, 422),
    openapi_extra=openapi.json_body(RollbackIn),
    summary="Return a session to an earlier step",
)
async def rollback_session(
    session_id: SessionId, request: Request, services: ServicesDep, caller: PrincipalDep
) -> Response:
    """θ, m, v and `t` become exactly what they were right after step `t`; steps go on
    from there. The session keeps what this needs for at least its last `history_steps`
    steps; an older step is 409 `history-unavailable` with `oldest_t`."""
    settings = services.settings
    await services.sessions.get(session_id, caller, "sessions.update", fresh=False)
    body = await json_model(
        request,
        RollbackIn,
        limit=settings.max_json_bytes,
        stall_seconds=settings.body_timeout_seconds,
    )
    record = await services.sessions.rollback(session_id, body.t, caller)
    return Response(render(SessionOut.of(record)), media_type=JSON)


@router.delete(
    "/sessions/{session_id}/quarantine/{worker}",
    status_code=204,
    responses={
        204: {"description": "The worker may send gradients again."},
        **openapi.problems(404, 422),
    },
    summary="End a worker's quarantine",
)
async def release_worker(
    session_id: SessionId,
    worker: Annotated[str, Path(max_length=128, description="The worker's name.")],
    services: ServicesDep,
    caller: PrincipalDep,
) -> Response:
    """Let a worker that screening quarantined send gradients again (its refusals in a
    row start over)."""
    await services.sessions.release_worker(session_id, worker, caller)
    return Response(status_code=204)


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    responses={204: {"description": "Deleted."}, **openapi.problems(404, 409)},
    summary="Delete a session",
)
async def delete_session(
    session_id: SessionId, services: ServicesDep, caller: PrincipalDep
) -> Response:
    """Delete the session and all its state, its idempotency records included."""
    await services.sessions.delete(session_id, caller)
    return Response(status_code=204)
