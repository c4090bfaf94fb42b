"""The HTTP API of API.md: parse, call, respond. No logic of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from adamhub_service import codec, errors
from adamhub_service.codec import BINARY, JSON
from adamhub_service.optim import FloatArray
from adamhub_service.problems import validation_problem
from adamhub_service.records import SessionRecord, is_session_id
from adamhub_service.schemas import (
    NormalInit,
    ParamsIn,
    ParamsOut,
    Problem,
    SessionCreate,
    SessionList,
    SessionOut,
    SessionPatch,
    StepIn,
    StepOut,
    session_out,
)
from adamhub_service.sessions import NewSession, SessionService, initial_params
from adamhub_service.settings import Settings
from adamhub_service.steps import StepService

STEP_HEADER = "Adamhub-Step"
APPLIED_STEP_HEADER = "Adamhub-Applied-Step"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_METADATA_BYTES = 64 * 1024

Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Services:
    """What a request handler works with; built once by the app's lifespan."""

    settings: Settings
    sessions: SessionService
    steps: StepService


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]
SessionId = Annotated[str, Path(description="A session id, `s_` and 32 hex digits.")]

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {codec.PROBLEM_JSON: {}}}
    for status in (404, 413, 415, 422, 503)
}


def _body_doc(model: type[BaseModel], *, binary: bool, required: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = {
        JSON: {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}
    }
    if binary:
        content[BINARY] = {
            "schema": {"type": "string", "format": "binary"},
            "description": "Raw little-endian vector; element type from Adamhub-Dtype.",
        }
    return {"requestBody": {"required": required, "content": content}}


def _binary_response_doc(model: type[BaseModel], description: str) -> dict[int | str, Any]:
    return {
        200: {
            "model": model,
            "description": description,
            "content": {BINARY: {"schema": {"type": "string", "format": "binary"}}},
        },
        **_PROBLEMS,
    }


router = APIRouter(prefix="/v1", tags=["sessions"])


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.PayloadTooLarge(
            f"the body has {declared} bytes; the limit is {limit}", limit=limit
        )
    parts: list[bytes] = []
    received = 0
    async for part in request.stream():
        received += len(part)
        if received > limit:
            raise errors.PayloadTooLarge(f"the body is over the {limit}-byte limit", limit=limit)
        parts.append(part)
    return b"".join(parts)


def validate(model: type[Model], document: dict[str, Any]) -> Model:
    """``document`` as ``model``, or 422 listing every problem."""
    try:
        return model.model_validate_json(codec.dump_json(document))
    except ValidationError as exc:
        raise validation_problem(exc.errors()) from exc


def _json(document: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(codec.dump_json(document), status_code=status, media_type=JSON, headers=headers)


def _check_metadata(metadata: dict[str, Any] | None) -> None:
    if metadata is not None and len(codec.dump_json(metadata)) > MAX_METADATA_BYTES:
        raise errors.InvalidHyperparameters(
            f"metadata is over {MAX_METADATA_BYTES} bytes as JSON; keep it small"
        )


async def _vector_body(
    request: Request,
    services: Services,
    record: SessionRecord,
    field: str,
    dtype_header: str | None,
) -> FloatArray:
    kind = codec.body_kind(request.headers.get("content-type"))
    body = await read_body(request, services.settings.max_body_bytes)
    if kind == BINARY:
        raw = codec.vector_from_bytes(body, codec.wire_dtype(dtype_header, record.dtype))
    else:
        document = codec.json_object(body)
        if field not in document:
            raise errors.InvalidVector(f"the body has no {field!r} member", field=field)
        extra = sorted(set(document) - {field})
        if extra:
            raise errors.InvalidVector(f"unknown members {extra}; only {field!r} is expected")
        raw = codec.vector_from_json(document[field], field)
    return codec.conform(raw, size=record.size, dtype=record.dtype, field=field)


def _if_none_match_heads(if_none_match: str | None) -> frozenset[str]:
    """The versions named by an If-None-Match header (ETags are quoted heads)."""
    if if_none_match is None:
        return frozenset()
    tags = (tag.strip().removeprefix("W/").strip('"') for tag in if_none_match.split(","))
    return frozenset(tag for tag in tags if tag)


def _etag(record: SessionRecord) -> str:
    return f'"{record.head}"'


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionOut,
    responses=_PROBLEMS,
    openapi_extra=_body_doc(SessionCreate, binary=False),
    summary="Create a session",
)
async def create_session(request: Request, services: ServicesDep) -> Response:
    """Create a session from `params`, or from `size` with an optional `init`."""
    codec.body_kind(request.headers.get("content-type"))
    settings = services.settings
    document = codec.json_object(await read_body(request, settings.max_body_bytes))
    params_value = document.pop("params", None)
    spec = validate(SessionCreate, document)
    _check_metadata(spec.metadata)
    if (params_value is None) == (spec.size is None):
        raise errors.InvalidHyperparameters("give exactly one of 'params' and 'size'")
    if params_value is not None:
        if spec.init is not None:
            raise errors.InvalidHyperparameters("'init' goes with 'size', not with 'params'")
        params = codec.conform(
            codec.vector_from_json(params_value, "params"),
            size=None,
            dtype=spec.dtype,
            field="params",
        )
    else:
        assert spec.size is not None
        if spec.size > settings.max_size:
            raise errors.InvalidHyperparameters(
                f"size {spec.size} is over this service's maximum of {settings.max_size}",
                max_size=settings.max_size,
            )
        init = spec.init
        params = (
            initial_params(spec.size, spec.dtype, mean=init.mean, std=init.std, seed=init.seed)
            if isinstance(init, NormalInit)
            else initial_params(spec.size, spec.dtype)
        )
    if params.size > settings.max_size:
        raise errors.InvalidHyperparameters(
            f"{params.size} parameters are over this service's maximum of {settings.max_size}",
            max_size=settings.max_size,
        )
    record = await services.sessions.create(
        NewSession(params, spec.optimizer.config(), spec.name, spec.metadata)
    )
    return _json(session_out(record), status=201, headers={"Location": f"/v1/sessions/{record.id}"})


@router.get("/sessions", response_model=SessionList, summary="List sessions")
async def list_sessions(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> Response:
    """The sessions, oldest first, a page at a time."""
    if cursor is not None and not is_session_id(cursor):
        raise errors.InvalidHyperparameters(f"cursor {cursor!r} is not a session id")
    records, next_cursor = await services.sessions.list(after=cursor, limit=limit)
    return _json({"sessions": [session_out(r) for r in records], "next_cursor": next_cursor})


@router.get(
    "/sessions/{session_id}",
    response_model=SessionOut,
    responses=_PROBLEMS,
    summary="Get a session",
)
async def get_session(session_id: SessionId, services: ServicesDep) -> Response:
    """One session's settings and step counter."""
    return _json(session_out(await services.sessions.record(session_id)))


@router.patch(
    "/sessions/{session_id}",
    response_model=SessionOut,
    responses=_PROBLEMS,
    openapi_extra=_body_doc(SessionPatch, binary=False),
    summary="Change a session's settings",
)
async def patch_session(session_id: SessionId, request: Request, services: ServicesDep) -> Response:
    """Change optimizer settings for the steps that follow, the name, or the metadata."""
    codec.body_kind(request.headers.get("content-type"))
    document = codec.json_object(await read_body(request, services.settings.max_body_bytes))
    patch = validate(SessionPatch, document)
    _check_metadata(patch.metadata)
    record = await services.sessions.update(
        session_id,
        optimizer=patch.optimizer.changes() if patch.optimizer else None,
        name=patch.name,
        metadata=patch.metadata,
        fields_set=frozenset(patch.model_fields_set),
    )
    return _json(session_out(record))


@router.delete(
    "/sessions/{session_id}", status_code=204, responses=_PROBLEMS, summary="Delete a session"
)
async def delete_session(session_id: SessionId, services: ServicesDep) -> Response:
    """Delete the session and all its state."""
    await services.sessions.delete(session_id)
    return Response(status_code=204)


@router.get(
    "/sessions/{session_id}/params",
    responses={
        **_binary_response_doc(ParamsOut, "The parameters."),
        304: {"description": "Unchanged"},
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
    unless = _if_none_match_heads(if_none_match)
    record, params = await services.sessions.params(session_id, unless_heads=unless)
    headers = {STEP_HEADER: str(record.t), "ETag": _etag(record)}
    if params is None:
        return Response(status_code=304, headers=headers)
    if codec.wants_binary(accept):
        return Response(codec.vector_bytes(params), media_type=BINARY, headers=headers)
    return _json({"t": record.t, "params": params}, headers=headers)


@router.put(
    "/sessions/{session_id}/params",
    response_model=SessionOut,
    responses=_PROBLEMS,
    openapi_extra=_body_doc(ParamsIn, binary=True),
    summary="Replace the parameters",
)
async def put_params(
    session_id: SessionId,
    request: Request,
    services: ServicesDep,
    adamhub_dtype: Annotated[str | None, Header()] = None,
) -> Response:
    """Start over from these parameters: `m`, `v` and `t` go back to zero."""
    record = await services.sessions.record(session_id, fresh=False)
    params = await _vector_body(request, services, record, "params", adamhub_dtype)
    updated = await services.sessions.replace_params(session_id, params)
    headers = {STEP_HEADER: str(updated.t), "ETag": _etag(updated)}
    return _json(session_out(updated), headers=headers)


@router.post(
    "/sessions/{session_id}/step",
    responses=_binary_response_doc(StepOut, "The new parameters."),
    openapi_extra=_body_doc(StepIn, binary=True),
    summary="Apply a gradient",
)
async def step(
    session_id: SessionId,
    request: Request,
    services: ServicesDep,
    return_: Annotated[Literal["params", "none"], Query(alias="return")] = "params",
    accept: Annotated[str | None, Header()] = None,
    adamhub_dtype: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[
        str | None, Header(description="1..255 visible ASCII characters")
    ] = None,
) -> Response:
    """Apply one gradient; answer with the new parameters (or only `t`)."""
    if idempotency_key is not None and not _valid_idempotency_key(idempotency_key):
        raise errors.InvalidHeader(
            "Idempotency-Key must be 1 to 255 visible ASCII characters", header="Idempotency-Key"
        )
    record = await services.sessions.record(session_id, fresh=False)
    gradient = await _vector_body(request, services, record, "gradient", adamhub_dtype)
    result = await services.steps.step(session_id, gradient, idempotency_key=idempotency_key)
    headers = {
        STEP_HEADER: str(result.record.t),
        APPLIED_STEP_HEADER: str(result.applied_t),
        "ETag": _etag(result.record),
    }
    if result.replayed:
        headers[REPLAYED_HEADER] = "true"
    if return_ == "none":
        return _json({"t": result.record.t, "applied_t": result.applied_t}, headers=headers)
    if codec.wants_binary(accept):
        return Response(codec.vector_bytes(result.params), media_type=BINARY, headers=headers)
    return _json(
        {"t": result.record.t, "applied_t": result.applied_t, "params": result.params},
        headers=headers,
    )


def _valid_idempotency_key(key: str) -> bool:
    return 1 <= len(key) <= 255 and all("!" <= char <= "~" for char in key)
