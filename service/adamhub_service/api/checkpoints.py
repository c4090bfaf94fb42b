"""Checkpoints and forks: ``GET …/checkpoint``, ``POST /v1/sessions/import``,
``POST …/fork``."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import xxhash
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from adamhub_service import errors
from adamhub_service.api import headers, openapi
from adamhub_service.api.auth import PrincipalDep
from adamhub_service.api.bodies import declared_length, read_body, validate
from adamhub_service.api.deps import ServicesDep, SessionId
from adamhub_service.api.negotiation import BINARY, body_kind, etag
from adamhub_service.api.parameters import IdempotencyKeyHeader, SingleValuedQuery
from adamhub_service.api.rendering import created_response
from adamhub_service.api.schemas import ForkIn, Name, SessionOut
from adamhub_service.model.settings import MAX_TAGS, SessionSettings, Tag
from adamhub_service.sessions.checkpoints import FORMAT
from adamhub_service.steps.idempotency import checked_key

router = APIRouter(prefix="/v1", tags=["checkpoints"], dependencies=[SingleValuedQuery])

SAFETENSORS = {
    "schema": {
        "type": "string",
        "format": "binary",
        "description": f"A safetensors file: tensors params, exp_avg, exp_avg_sq (and "
        f"max_exp_avg_sq with AMSGrad); metadata format={FORMAT}, t, dtype, optimizer, "
        "param_groups.",
    }
}
# Room for the safetensors header beside the tensors.
_HEADER_BYTES = 1 << 20


@router.get(
    "/sessions/{session_id}/checkpoint",
    response_class=Response,
    responses={
        200: {
            "description": "The session's state at its current step.",
            "headers": openapi.STEP_HEADERS,
            "content": {BINARY: SAFETENSORS},
        },
        **openapi.problems(404),
    },
    summary="Export a checkpoint",
)
async def export_checkpoint(
    session_id: SessionId, services: ServicesDep, caller: PrincipalDep
) -> Response:
    """θ, m, v (and max v) and the settings, one step's, as a safetensors file."""
    known = await services.sessions.get(session_id, caller, "params.read", fresh=False)
    vectors = 4 if known.optimizer.amsgrad else 3
    # The file, and a state rebuilt to make it when this process does not hold it.
    state_bytes = known.size * np.dtype(known.dtype).itemsize * vectors
    async with services.budget.hold(2 * state_bytes):
        record, file = await services.sessions.checkpoint(session_id, caller)
    answer_headers = {
        headers.STEP: str(record.t),
        "ETag": etag(record.head),
        "Content-Disposition": f'attachment; filename="{record.id}-t{record.t}.safetensors"',
    }
    return Response(file, media_type=BINARY, headers=answer_headers)


@router.post(
    "/sessions/import",
    status_code=201,
    response_model=SessionOut,
    responses={
        201: {"headers": {**openapi.LOCATION_HEADER, **openapi.REPLAYED_HEADERS}},
        **openapi.problems(408, 413, 415, 422),
    },
    openapi_extra={"requestBody": {"required": True, "content": {BINARY: SAFETENSORS}}},
    summary="Import a checkpoint as a new session",
)
async def import_checkpoint(
    request: Request,
    services: ServicesDep,
    caller: PrincipalDep,
    name: Annotated[Name | None, Query()] = None,
    tag: Annotated[
        list[Tag] | None,
        Query(max_length=MAX_TAGS, description="A tag of the new session (repeat for more)."),
    ] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """A new session that goes on from the checkpoint exactly as the original would."""
    idempotency_key = checked_key(idempotency_key)
    caller.require("sessions.create")
    settings = services.settings
    if body_kind(request.headers.get("content-type")) != BINARY:
        raise errors.UnsupportedMediaType(
            f"send the checkpoint file as {BINARY}", supported=[BINARY]
        )
    limit = settings.max_size * 8 * 4 + _HEADER_BYTES
    # The file, and the tensors read out of it.
    reserve = 2 * min(declared_length(request) or limit, limit)
    async with services.budget.hold(reserve):
        data = await read_body(
            request, limit=limit, stall_seconds=settings.body_timeout_seconds, what="checkpoint"
        )
        created = await services.sessions.import_checkpoint(
            data,
            caller,
            settings=SessionSettings(name=name, tags=tuple(tag or ())),
            idempotency_key=idempotency_key,
            request_digest=xxhash.xxh3_128_hexdigest(data),
        )
    return created_response(created)


@router.post(
    "/sessions/{session_id}/fork",
    status_code=201,
    response_model=SessionOut,
    responses={
        201: {"headers": openapi.LOCATION_HEADER},
        **openapi.problems(404, 408, 413, 415, 422),
    },
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": openapi.ref(ForkIn)}},
        }
    },
    summary="Fork a session",
)
async def fork_session(
    session_id: SessionId, request: Request, services: ServicesDep, caller: PrincipalDep
) -> Response:
    """A new session with this one's state, settings and metadata; `name` and `tags`
    optional (default: the original's)."""
    settings = services.settings
    body = await read_body(
        request, limit=settings.max_json_bytes, stall_seconds=settings.body_timeout_seconds
    )
    fork = ForkIn()
    if body:
        body_kind(request.headers.get("content-type"))
        fork = validate(ForkIn, body)
    created = await services.sessions.fork(session_id, caller, changes=fork.settings_changes())
    return created_response(created)
