"""``/v1/sessions/{id}/step``: apply a gradient.

The hottest route: it reads its request itself instead of through declared parameters
and dependencies (whose solving cost more than the rest of a small step), and documents
those parameters by hand.
"""

from __future__ import annotations

import math
import re

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from adamhub_service import errors
from adamhub_service.api import negotiation, openapi
from adamhub_service.api.auth import principal
from adamhub_service.api.bodies import received_vector
from adamhub_service.api.deps import Services
from adamhub_service.api.negotiation import (
    APPLIED_STEP_HEADER,
    BINARY,
    DTYPE_HEADER,
    JSON,
    REPLAYED_HEADER,
    STEP_HEADER,
    etag,
)
from adamhub_service.api.params import vector_request_budget
from adamhub_service.api.problems import validation_problem
from adamhub_service.api.schemas import (
    MAX_SAMPLES,
    WIRE_DTYPES,
    RoundPendingOut,
    StepIn,
    StepOut,
    StepSettingsIn,
    render,
)
from adamhub_service.steps.idempotency import checked_key
from adamhub_service.steps.rounds import Contributed, RoundPending
from adamhub_service.steps.service import SETTINGS_HEADER, Report, StepSettings
from adamhub_service.tenancy.principal import Principal

router = APIRouter(prefix="/v1", tags=["steps"])

BASE_STEP_HEADER = "Adamhub-Base-Step"
SAMPLES_HEADER = "Adamhub-Samples"
LOSS_HEADER = "Adamhub-Loss"
WORKER_HEADER = "Adamhub-Worker"
WORKER_PATTERN = re.compile(r"^[\x21-\x7e]([\x20-\x7e]{0,126}[\x21-\x7e])?$")

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
        DTYPE_HEADER.lower(),
        "header",
        {"type": "string", "enum": list(WIRE_DTYPES)},
        openapi.DTYPE_PARAMETER_DESCRIPTION,
    ),
    openapi.parameter(
        SETTINGS_HEADER.lower(),
        "header",
        {"type": "string"},
        'JSON `{"optimizer": {…}, "param_groups": [{…}, …]}`, as in PATCH: '
        "hyperparameters for this step and the ones after it, committed with it "
        "(schedulers need no extra request).",
    ),
    openapi.parameter(
        BASE_STEP_HEADER.lower(),
        "header",
        {"type": "string", "pattern": "^[0-9]{1,18}$"},
        "The t of the parameters the gradient was computed at; refused with 409 "
        "stale-gradient beyond the session's max_staleness, or when not reached.",
    ),
    openapi.parameter(
        SAMPLES_HEADER.lower(),
        "header",
        {"type": "string", "pattern": "^[0-9]{1,13}$"},
        "In a rounds session, the samples this gradient stands for: its weight nᵢ in the "
        "round's mean Σ nᵢ·gᵢ / Σ nᵢ (default 1, at least 1).",
    ),
    openapi.parameter(
        LOSS_HEADER.lower(),
        "header",
        {"type": "string"},
        "The worker's loss for this gradient, a finite number: recorded in the history "
        "(in rounds, the samples-weighted mean of the contributions').",
    ),
    openapi.parameter(
        WORKER_HEADER.lower(),
        "header",
        {"type": "string", "pattern": WORKER_PATTERN.pattern},
        "Who sent the step, for the history (default: the API key's id).",
    ),
    openapi.parameter(
        "prefer",
        "header",
        {"type": "string"},
        "`wait=N`: in a rounds session, wait up to N seconds for the round to close "
        "before answering 202 (default ADAMHUB_ROUND_WAIT_SECONDS).",
    ),
    openapi.parameter(
        "idempotency-key",
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
    session_id: str = request.path_params["session_id"]
    return_ = request.query_params.get("return", "params")
    if return_ not in RETURN_CHOICES:
        raise errors.ValidationFailed(
            f"return must be one of {', '.join(RETURN_CHOICES)}, not {return_!r}",
            errors=[{"loc": ["query", "return"], "msg": f"one of {list(RETURN_CHOICES)}"}],
        )
    headers = request.headers
    dtype_header = headers.get(DTYPE_HEADER)
    idempotency_key = checked_key(headers.get("idempotency-key"))
    step_settings = _step_settings(headers.get(SETTINGS_HEADER))
    base_step = _base_step(headers.get(BASE_STEP_HEADER))
    samples = _samples(headers.get(SAMPLES_HEADER))
    report = Report(_loss(headers.get(LOSS_HEADER)), _worker(headers.get(WORKER_HEADER), caller))
    settings = services.settings
    wait_seconds = _preferred_wait(headers.get("prefer"), settings.round_wait_seconds)
    wait_seconds = min(wait_seconds, settings.max_wait_seconds)
    record = await services.sessions.get(session_id, caller, "steps.create", fresh=False)
    if step_settings is not None:
        step_settings.applied_to(record.optimizer)  # 422 before the body is read
    contributed: Contributed | None = None
    async with services.budget.hold(vector_request_budget(services, record, dtype_header)):
        with services.metrics.step_phases.labels("read_body").time():
            received = await received_vector(
                request,
                record,
                "gradient",
                dtype_header,
                json_limit=settings.max_json_bytes,
                stall_seconds=settings.body_timeout_seconds,
            )
        gradient = negotiation.conform(
            received, size=record.size, dtype=record.dtype, field="gradient"
        )
        # The log keeps a narrower wire dtype as it came (it widens exactly).
        narrower = received.dtype.itemsize < gradient.dtype.itemsize
        if record.rounds is None:
            result = await services.steps.step(
                session_id,
                gradient,
                logged=received if narrower else None,
                idempotency_key=idempotency_key,
                settings=step_settings,
                base_step=base_step,
                report=report,
            )
        else:
            contributed = await services.rounds.contribute(
                record,
                gradient,
                logged=received if narrower else None,
                samples=samples,
                idempotency_key=idempotency_key,
                settings=step_settings,
                base_step=base_step,
                report=report,
                wait_seconds=wait_seconds,
            )
    if contributed is not None:
        # The wait holds no memory: the gradient is stored.
        answer = await services.rounds.answer(contributed, wait_seconds)
        if isinstance(answer, RoundPending):
            pending = RoundPendingOut.model_construct(
                t=answer.t,
                round=answer.round,
                contributions=answer.contributions,
                needed=answer.needed,
            )
            return Response(
                render(pending),
                status_code=202,
                media_type=JSON,
                headers={STEP_HEADER: str(answer.t)},
            )
        result = answer
    answer_headers = {
        STEP_HEADER: str(result.record.t),
        APPLIED_STEP_HEADER: str(result.applied_t),
        "ETag": etag(result.record.head),
    }
    if result.replayed:
        answer_headers[REPLAYED_HEADER] = "true"
    if return_ == "params" and negotiation.wants_binary(headers.get("accept")):
        return Response(
            negotiation.vector_bytes(result.params), media_type=BINARY, headers=answer_headers
        )
    body = StepOut.model_construct(
        t=result.record.t,
        applied_t=result.applied_t,
        params=result.params if return_ == "params" else None,
    )
    return Response(render(body, exclude_none=True), media_type=JSON, headers=answer_headers)


def _base_step(header: str | None) -> int | None:
    """The Adamhub-Base-Step header as a step number, or 422 naming it."""
    if header is None:
        return None
    value = header.strip()
    if not value.isdigit() or len(value) > 18:
        raise errors.InvalidHeader(
            f"{BASE_STEP_HEADER} must be a step number (t ≥ 0), not {header!r}",
            header=BASE_STEP_HEADER,
        )
    return int(value)


def _samples(header: str | None) -> int:
    """The Adamhub-Samples header as a count (default 1), or 422 naming it."""
    if header is None:
        return 1
    value = header.strip()
    if not value.isdigit() or len(value) > 13 or not 1 <= int(value) <= MAX_SAMPLES:
        raise errors.InvalidHeader(
            f"{SAMPLES_HEADER} must be a whole number of samples from 1 to {MAX_SAMPLES}, "
            f"not {header!r}",
            header=SAMPLES_HEADER,
        )
    return int(value)


def _loss(header: str | None) -> float | None:
    """The Adamhub-Loss header as a finite number, or 422 naming it."""
    if header is None:
        return None
    try:
        loss = float(header.strip())
    except ValueError:
        loss = math.nan
    if not math.isfinite(loss):
        raise errors.InvalidHeader(
            f"{LOSS_HEADER} must be a finite number, not {header!r}", header=LOSS_HEADER
        )
    return loss


def _worker(header: str | None, caller: Principal) -> str:
    """Who sent the step: the Adamhub-Worker header (422 when malformed), else the key."""
    if header is None:
        return caller.key_id
    if not WORKER_PATTERN.fullmatch(header):
        raise errors.InvalidHeader(
            f"{WORKER_HEADER} must be 1 to 128 printable ASCII characters, not {header!r}",
            header=WORKER_HEADER,
        )
    return header


def _preferred_wait(header: str | None, default: float) -> float:
    """The seconds a ``Prefer: wait=N`` header asks for (RFC 7240), else ``default``."""
    if header is None:
        return default
    for preference in header.replace(";", ",").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return default  # a preference the server cannot honour is ignored
            if math.isfinite(seconds) and seconds >= 0:
                return seconds
    return default


def _step_settings(header: str | None) -> StepSettings | None:
    """The settings a step carries, or 422 naming the header."""
    if header is None:
        return None
    try:
        document = orjson.loads(header)
        return StepSettingsIn.model_validate(document).settings()
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidHeader(
            f"{SETTINGS_HEADER} must be a JSON object: {exc}", header=SETTINGS_HEADER
        ) from exc
    except ValidationError as exc:
        problem = validation_problem(exc.errors())
        raise errors.InvalidHeader(
            f"{SETTINGS_HEADER}: {problem.detail}", header=SETTINGS_HEADER
        ) from exc
