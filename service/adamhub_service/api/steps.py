"""``/v1/sessions/{id}/step``: apply a gradient.

The hottest route: it reads its request itself instead of through declared parameters
and dependencies (whose solving cost more than the rest of a small step), and documents
those parameters by hand.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from adamhub_service import errors
from adamhub_service.api import headers, negotiation, openapi
from adamhub_service.api.auth import principal
from adamhub_service.api.bodies import received_gradient
from adamhub_service.api.deps import Services
from adamhub_service.api.negotiation import BINARY, JSON, etag
from adamhub_service.api.problems import validation_problem
from adamhub_service.api.schemas import (
    WIRE_DTYPES,
    RoundPendingOut,
    StepIn,
    StepOut,
    StepSettingsIn,
    render,
)
from adamhub_service.model.quantized import Int8Blocks
from adamhub_service.model.records import SessionRecord
from adamhub_service.optim import FloatArray
from adamhub_service.steps.commit import Report
from adamhub_service.steps.idempotency import checked_key
from adamhub_service.steps.values import RoundPending, StepRequest, StepSettings

router = APIRouter(prefix="/v1", tags=["steps"])

RETURN_CHOICES = ("params", "none")
_PARAMETERS = [
    openapi.SESSION_ID_PARAMETER,
    openapi.parameter(
        "return",
        "query",
        {"type": "string", "enum": list(RETURN_CHOICES), "default": "params"},
        "`none`: answer with `t` and `applied_t` only.",
    ),
    openapi.parameter(
        "accept",
        "header",
        {"type": "string"},
        "`application/octet-stream` for the parameters as raw bytes.",
    ),
    openapi.parameter(
        headers.DTYPE.lower(),
        "header",
        {"type": "string", "enum": list(negotiation.GRADIENT_DTYPES)},
        openapi.DTYPE_PARAMETER_DESCRIPTION
        + " `int8-block4096`: ceil(n/4096) little-endian float32 scales, then n int8 "
        "values; element i is q[i] × scale[i // 4096] / 127 (in float32), a quarter of "
        "float32's bytes.",
    ),
    openapi.parameter(
        headers.ACCEPT_DTYPE.lower(),
        "header",
        {"type": "string", "enum": list(WIRE_DTYPES)},
        "The dtype of a binary answer: `bfloat16` or `float16` halve it (the answer's "
        "`Adamhub-Dtype` says what it is: the session's when float16 cannot hold the "
        "values).",
    ),
    openapi.parameter(
        headers.SETTINGS.lower(),
        "header",
        {"type": "string"},
        'JSON `{"optimizer": {…}, "param_groups": [{…}, …]}`, as in PATCH: '
        "hyperparameters for this step and the ones after it, committed with it "
        "(schedulers need no extra request).",
    ),
    openapi.parameter(
        headers.BASE_STEP.lower(),
        "header",
        {"type": "string", "pattern": "^[0-9]{1,18}$"},
        "The t of the parameters the gradient was computed at; refused with 409 "
        "stale-gradient beyond the session's max_staleness, or when not reached.",
    ),
    openapi.parameter(
        headers.SEGMENTS.lower(),
        "header",
        {"type": "string", "pattern": "^[0-9]{1,9}( *, *[0-9]{1,9})*$"},
        "A partial step, in a session made with `segments`: the indices of the segments "
        "(tensors) the body holds, increasing, comma-separated; the body holds their "
        "gradients one after another. The others keep θ, m, v and their step counts.",
    ),
    openapi.parameter(
        headers.SAMPLES.lower(),
        "header",
        {"type": "string", "pattern": "^[0-9]{1,13}$"},
        "In a rounds session, the samples this gradient stands for: its weight nᵢ in the "
        "round's mean Σ nᵢ·gᵢ / Σ nᵢ (default 1, at least 1).",
    ),
    openapi.parameter(
        headers.LOSS.lower(),
        "header",
        {"type": "string"},
        "The worker's loss for this gradient, a finite number: recorded in the history "
        "(in rounds, the samples-weighted mean of the contributions').",
    ),
    openapi.parameter(
        headers.WORKER.lower(),
        "header",
        {"type": "string", "pattern": headers.WORKER_PATTERN.pattern},
        "Who sent the step, for the history (default: the API key's id).",
    ),
    openapi.parameter(
        headers.PREFER.lower(),
        "header",
        {"type": "string"},
        "`wait=N`: in a rounds session, wait up to N seconds for the round to close "
        "before answering 202 (default ADAMHUB_ROUND_WAIT_SECONDS).",
    ),
    openapi.parameter(
        headers.IDEMPOTENCY_KEY.lower(),
        "header",
        {"type": "string", "pattern": openapi.IDEMPOTENCY_KEY_PATTERN},
        openapi.IDEMPOTENCY_KEY_DESCRIPTION,
    ),
]


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
        202: {
            "description": "Rounds: the contribution is in, and its round did not close "
            "within the wait. Long-poll `GET …/params?min_step=<round>&wait=S` for it.",
            "model": RoundPendingOut,
        },
        **openapi.problems(404, 408, 409, 413, 415, 422),
    },
    openapi_extra={**openapi.json_body(StepIn, binary=True), "parameters": _PARAMETERS},
    summary="Apply a gradient",
)
async def step(request: Request) -> Response:
    """Apply one gradient; answer with the new parameters (or only `t`)."""
    services: Services = request.app.state.services
    caller = await principal(request, services)
    return_ = request.query_params.get("return", "params")
    if return_ not in RETURN_CHOICES:
        raise errors.ValidationFailed(
            f"return must be one of {', '.join(RETURN_CHOICES)}, not {return_!r}",
            errors=[{"loc": ["query", "return"], "msg": f"one of {list(RETURN_CHOICES)}"}],
        )
    sent = request.headers
    dtype_header = sent.get(headers.DTYPE)
    narrow = negotiation.answer_dtype(sent.get(headers.ACCEPT_DTYPE))
    settings = services.settings
    wait_seconds = headers.preferred_wait(sent.get(headers.PREFER), settings.round_wait_seconds)
    step_request = StepRequest(
        idempotency_key=checked_key(sent.get(headers.IDEMPOTENCY_KEY)),
        settings=_step_settings(sent.get(headers.SETTINGS)),
        base_step=headers.base_step(sent.get(headers.BASE_STEP)),
        samples=headers.samples(sent.get(headers.SAMPLES)),
        report=Report(
            headers.loss(sent.get(headers.LOSS)),
            headers.worker(sent.get(headers.WORKER), caller.key_id),
        ),
        wait_seconds=min(wait_seconds, settings.max_wait_seconds),
        segments=headers.segments(sent.get(headers.SEGMENTS)),
        # 415 for a dtype the service does not take, before anything is read.
        wire_itemsize=negotiation.gradient_itemsize(dtype_header),
    )

    async def read_gradient(
        record: SessionRecord, size: int
    ) -> tuple[FloatArray | Int8Blocks, FloatArray]:
        received = await received_gradient(
            request,
            record,
            dtype_header,
            json_limit=settings.max_json_bytes,
            stall_seconds=settings.body_timeout_seconds,
            size=None if size == record.size else size,
        )
        wire = received.dequantized() if isinstance(received, Int8Blocks) else received
        gradient = negotiation.conform(wire, size=size, dtype=record.dtype, field="gradient")
        return received, gradient

    session_id: str = request.path_params["session_id"]
    result = await services.steps.submit(caller, session_id, step_request, read_gradient)
    if isinstance(result, RoundPending):
        pending = RoundPendingOut.model_construct(
            t=result.t,
            round=result.round,
            contributions=result.contributions,
            needed=result.needed,
        )
        return Response(
            render(pending), status_code=202, media_type=JSON, headers={headers.STEP: str(result.t)}
        )
    answer_headers = {
        headers.STEP: str(result.record.t),
        headers.APPLIED_STEP: str(result.applied_t),
        "ETag": etag(result.record.head),
    }
    if result.replayed:
        answer_headers[headers.REPLAYED] = "true"
    if return_ == "params" and negotiation.wants_binary(sent.get("accept")):
        data, dtype = negotiation.answer_vector(result.params, narrow)
        answer_headers[headers.DTYPE] = dtype
        return Response(data, media_type=BINARY, headers=answer_headers)
    body = StepOut.model_construct(
        t=result.record.t,
        applied_t=result.applied_t,
        params=result.params if return_ == "params" else None,
    )
    return Response(render(body, exclude_none=True), media_type=JSON, headers=answer_headers)


def _step_settings(header: str | None) -> StepSettings | None:
    """The settings a step carries, or 422 naming the header."""
    if header is None:
        return None
    try:
        document = orjson.loads(header)
        return StepSettingsIn.model_validate(document).settings()
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidHeader(
            f"{headers.SETTINGS} must be a JSON object: {exc}", header=headers.SETTINGS
        ) from exc
    except ValidationError as exc:
        problem = validation_problem(exc.errors())
        raise errors.InvalidHeader(
            f"{headers.SETTINGS}: {problem.detail}", header=headers.SETTINGS
        ) from exc
