"""``/v1/sessions/{id}/step``: apply a gradient."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from adamhub_service.api import negotiation, openapi
from adamhub_service.api.auth import PrincipalDep
from adamhub_service.api.bodies import received_vector
from adamhub_service.api.deps import ServicesDep, SessionId
from adamhub_service.api.negotiation import (
    APPLIED_STEP_HEADER,
    BINARY,
    JSON,
    REPLAYED_HEADER,
    STEP_HEADER,
    etag,
)
from adamhub_service.api.params import DtypeHeader, IdempotencyKeyHeader, vector_request_budget
from adamhub_service.api.schemas import StepIn, StepOut, render
from adamhub_service.steps.idempotency import checked_key

router = APIRouter(prefix="/v1", tags=["steps"])


@router.post(
    "/sessions/{session_id}/step",
    response_model=StepOut,
    response_model_exclude_none=True,
    responses={
        200: {
            "description": "The new parameters (JSON, or raw bytes with "
            "`Accept: application/octet-stream`); only `t` and `applied_t` with "
            "`?return=none`.",
            "headers": {**openapi.STEP_HEADERS, **openapi.APPLIED_HEADERS},
            "content": {BINARY: openapi.BINARY_VECTOR},
        },
        **openapi.problems(404, 408, 409, 413, 415, 422),
    },
    openapi_extra=openapi.json_body(StepIn, binary=True),
    summary="Apply a gradient",
)
async def step(
    session_id: SessionId,
    request: Request,
    services: ServicesDep,
    caller: PrincipalDep,
    return_: Annotated[Literal["params", "none"], Query(alias="return")] = "params",
    accept: Annotated[str | None, Header()] = None,
    adamhub_dtype: DtypeHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Apply one gradient; answer with the new parameters (or only `t`)."""
    idempotency_key = checked_key(idempotency_key)
    settings = services.settings
    record = await services.sessions.get(session_id, caller, "steps.create", fresh=False)
    async with services.budget.hold(vector_request_budget(services, record, adamhub_dtype)):
        received = await received_vector(
            request,
            record,
            "gradient",
            adamhub_dtype,
            json_limit=settings.max_json_bytes,
            stall_seconds=settings.body_timeout_seconds,
        )
        gradient = negotiation.conform(
            received, size=record.size, dtype=record.dtype, field="gradient"
        )
        # The log keeps a narrower wire dtype as it came (it widens exactly).
        narrower = received.dtype.itemsize < gradient.dtype.itemsize
        result = await services.steps.step(
            session_id,
            gradient,
            logged=received if narrower else None,
            idempotency_key=idempotency_key,
        )
    headers = {
        STEP_HEADER: str(result.record.t),
        APPLIED_STEP_HEADER: str(result.applied_t),
        "ETag": etag(result.record.head),
    }
    if result.replayed:
        headers[REPLAYED_HEADER] = "true"
    if return_ == "params" and negotiation.wants_binary(accept):
        return Response(negotiation.vector_bytes(result.params), media_type=BINARY, headers=headers)
    body = StepOut.model_construct(
        t=result.record.t,
        applied_t=result.applied_t,
        params=result.params if return_ == "params" else None,
    )
    return Response(render(body, exclude_none=True), media_type=JSON, headers=headers)
