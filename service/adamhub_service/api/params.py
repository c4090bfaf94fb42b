"""``/v1/sessions/{id}/params``: read or replace a session's parameters."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from adamhub_service.api import headers, negotiation, openapi
from adamhub_service.api.auth import PrincipalDep
from adamhub_service.api.bodies import vector_body
from adamhub_service.api.deps import ServicesDep, SessionId
from adamhub_service.api.negotiation import BINARY, JSON, etag
from adamhub_service.api.parameters import DtypeHeader, SingleValuedQuery
from adamhub_service.api.schemas import ParamsIn, ParamsOut, SessionOut, render
from adamhub_service.model.records import SessionRecord
from adamhub_service.sessions.budget import vector_request_bytes

router = APIRouter(prefix="/v1", tags=["parameters"], dependencies=[SingleValuedQuery])

# The longest a params request may wait for a step.
MAX_WAIT_SECONDS = 300


def vector_request_budget(record: SessionRecord, dtype_header: str | None) -> int:
    """The bytes a request carrying a vector of this session holds while it runs."""
    wire = negotiation.wire_dtype(dtype_header, record.dtype).itemsize
    vectors = 4 if record.optimizer.amsgrad else 3
    return vector_request_bytes(record.size, wire, np.dtype(record.dtype).itemsize, vectors)


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
        **openapi.problems(404, 415, 422),
    },
    summary="Read the parameters",
)
async def get_params(
    session_id: SessionId,
    services: ServicesDep,
    caller: PrincipalDep,
    accept: Annotated[str | None, Header()] = None,
    adamhub_accept_dtype: Annotated[
        str | None,
        Header(
            description="The dtype of a binary answer: `bfloat16` or `float16` halve it "
            "(the answer's `Adamhub-Dtype` says what it is: the session's when float16 "
            "cannot hold the values).",
            json_schema_extra={"enum": list(negotiation.WIRE_DTYPES)},
        ),
    ] = None,
    if_none_match: Annotated[str | None, Header()] = None,
    min_step: Annotated[
        int | None, Query(ge=0, description="Answer once t reaches this step (see `wait`).")
    ] = None,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="Seconds to wait for `min_step`; then the current parameters.",
        ),
    ] = 0.0,
) -> Response:
    """The current parameters, as JSON or raw bytes (`Accept: application/octet-stream`).

    With `min_step` and `wait`, a long-poll: the answer comes as soon as t ≥ `min_step`,
    or after `wait` seconds with the parameters as they are then.
    """
    unless = negotiation.if_none_match_heads(if_none_match)
    narrow = negotiation.answer_dtype(adamhub_accept_dtype)  # 415 before any wait
    wait = min(wait, services.settings.max_wait_seconds)
    if min_step is not None and wait > 0:
        # In a rounds session, a waiter also closes the rounds that come due.
        await services.steps.wait_for_step(caller, session_id, min_step, wait)
    record, params = await services.sessions.params(session_id, caller, unless_heads=unless)
    answer_headers = {headers.STEP: str(record.t), "ETag": etag(record.head)}
    if params is None:
        return Response(status_code=304, headers=answer_headers)
    if negotiation.wants_binary(accept):
        data, dtype = negotiation.answer_vector(params, narrow)
        answer_headers[headers.DTYPE] = dtype
        return Response(data, media_type=BINARY, headers=answer_headers)
    return Response(
        render(ParamsOut.model_construct(t=record.t, params=params)),
        media_type=JSON,
        headers=answer_headers,
    )


@router.put(
    "/sessions/{session_id}/params",
    response_model=SessionOut,
    responses={
        200: {"description": "The session, at t = 0.", "headers": openapi.STEP_HEADERS},
        **openapi.problems(404, 408, 409, 413, 415, 422),
    },
    openapi_extra=openapi.json_body(ParamsIn, binary=True),
    summary="Replace the parameters",
)
async def put_params(
    session_id: SessionId,
    request: Request,
    services: ServicesDep,
    caller: PrincipalDep,
    adamhub_dtype: DtypeHeader = None,
) -> Response:
    """Start over from these parameters: `m`, `v` and `t` go back to zero."""
    settings = services.settings
    record = await services.sessions.get(session_id, caller, "sessions.update", fresh=False)
    async with services.budget.hold(vector_request_budget(record, adamhub_dtype)):
        params = await vector_body(
            request,
            record,
            "params",
            adamhub_dtype,
            json_limit=settings.max_json_bytes,
            stall_seconds=settings.body_timeout_seconds,
        )
        updated = await services.sessions.replace_params(session_id, params, caller)
    answer_headers = {headers.STEP: str(updated.t), "ETag": etag(updated.head)}
    return Response(render(SessionOut.of(updated)), media_type=JSON, headers=answer_headers)
