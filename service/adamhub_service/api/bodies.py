"""Reading request bodies: bounded in size, into validated models and vectors."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from adamhub_service import errors
from adamhub_service.api import negotiation
from adamhub_service.api.negotiation import BINARY
from adamhub_service.api.problems import validation_problem
from adamhub_service.optim import FloatArray
from adamhub_service.sessions.records import SessionRecord

Model = TypeVar("Model", bound=BaseModel)


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


async def json_model(request: Request, model: type[Model], limit: int) -> Model:
    """A JSON body validated as ``model``, or 415/422 saying what is wrong."""
    negotiation.body_kind(request.headers.get("content-type"))
    document = negotiation.json_object(await read_body(request, limit))
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise validation_problem(exc.errors()) from exc


async def vector_body(
    request: Request, record: SessionRecord, field: str, dtype_header: str | None, limit: int
) -> FloatArray:
    """A vector of the session's size and dtype: raw bytes, or JSON ``{field: [...]}``."""
    kind = negotiation.body_kind(request.headers.get("content-type"))
    body = await read_body(request, limit)
    if kind == BINARY:
        raw = negotiation.vector_from_bytes(
            body, negotiation.wire_dtype(dtype_header, record.dtype)
        )
    else:
        document = negotiation.json_object(body)
        if field not in document:
            raise errors.InvalidVector(f"the body has no {field!r} member", field=field)
        extra = sorted(set(document) - {field})
        if extra:
            raise errors.InvalidVector(f"unknown members {extra}; only {field!r} is expected")
        raw = negotiation.vector_from_json(document[field], field)
    return negotiation.conform(raw, size=record.size, dtype=record.dtype, field=field)
