"""``/v1/sessions/{id}/params``: read or replace a session's parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from adamhub_service.api import negotiation, openapi
from adamhub_service.api.bodies import vector_body
from adamhub_service.api.deps import ServicesDep, SessionId
from adamhub_service.api.negotiation import BINARY, JSON, STEP_HEADER, etag
from adamhub_service.api.schemas import WIRE_DTYPES, ParamsIn, ParamsOut, SessionOut, render

router = APIRouter(prefix="/v1", tags=["parameters"])

DtypeHeader = Annotated[
    str | None,
    Header(
        description="Element type of a binary body (default: the session's dtype).",
        json_schema_extra={"enum": list(WIRE_DTYPES)},
    ),
]


@router.get(
    "/sessions/{session_id}/params",
    response_model=ParamsOut,
    responses={
        200: {
            "description": "The parameters, as JSON or as raw bytes.",
            "headers": openapi.STEP_HEADERS,
            "content": {BINARY: openapi.BINARY_VECTOR},
        },
        304: {"description": "Not modified: `If-None-Match` names the current version."},
        **openapi.problems(404),
    },
    summary="Read the parameters",
)
async def get_params(
    session_id: SessionId,
    services: ServicesDep,
    accept: Annotated[str | None, Header()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The current parameters, as JSON or raw bytes (`Accept: application/octet-stream`)."""
    unless = negotiation.if_none_match_heads(if_none_match)
    record, params = await services.sessions.params(session_id, unless_heads=unless)
    headers = {STEP_HEADER: str(record.t), "ETag": etag(record.head)}
    if params is None:
        return Response(status_code=304, headers=headers)
    if negotiation.wants_binary(accept):
        return Response(negotiation.vector_bytes(params), media_type=BINARY, headers=headers)
    return Response(
        render(ParamsOut.model_construct(t=record.t, params=params)),
        media_type=JSON,
        headers=headers,
    )


@router.put(
    "/sessions/{session_id}/params",
    response_model=SessionOut,
    responses={
        200: {"description": "The session, at t = 0.", "headers": openapi.STEP_HEADERS},
        **openapi.problems(404, 409, 413, 415, 422),
    },
    openapi_extra=openapi.json_body(ParamsIn, binary=True),
    summary="Replace the parameters",
)
async def put_params(
    session_id: SessionId,
    request: Request,
    services: ServicesDep,
    adamhub_dtype: DtypeHeader = None,
) -> Response:
    """Start over from these parameters: `m`, `v` and `t` go back to zero."""
    record = await services.sessions.get(session_id, fresh=False)
    limit = services.settings.max_body_bytes
    params = await vector_body(request, record, "params", adamhub_dtype, limit)
    updated = await services.sessions.replace_params(session_id, params)
    headers = {STEP_HEADER: str(updated.t), "ETag": etag(updated.head)}
    return Response(render(SessionOut.of(updated)), media_type=JSON, headers=headers)
