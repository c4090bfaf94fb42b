"""Reading request bodies: sized before they are read, bounded while they are read,
never waited on for long, into validated models and vectors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from adamhub_service import errors
from adamhub_service.api import negotiation
from adamhub_service.api.negotiation import BINARY
from adamhub_service.api.problems import validation_problem
from adamhub_service.model.quantized import BLOCK_ELEMENTS, INT8_BLOCKS, Int8Blocks
from adamhub_service.model.quantized import wire_bytes as quantized_bytes
from adamhub_service.model.records import SessionRecord
from adamhub_service.optim import FloatArray

Model = TypeVar("Model", bound=BaseModel)

# The ASGI extension by which the service's HTTP protocol (cli/protocol.py) reads a
# body straight into a buffer: scope["extensions"][DIRECT_BODY]["readinto"].
DIRECT_BODY = "adamhub.direct_body"


class ReadInto(Protocol):
    """Reads a request body straight into its final buffer as the bytes arrive: no
    message per piece, and no copies between (ASGI hands a body over piece by piece,
    each copied twice on its way)."""

    async def __call__(self, view: memoryview, stall_seconds: float) -> int | None:
        """Fill ``view`` with the body; how many bytes it had (more than ``len(view)``:
        it was too long, and the rest is not kept), or None when the client went away.
        Raises ``TimeoutError`` when no byte came for ``stall_seconds``."""
        ...


def declared_length(request: Request) -> int | None:
    """The Content-Length of a request, when it has a valid one."""
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


async def _consume(request: Request, stall_seconds: float, take: Callable[[bytes], None]) -> None:
    """Hand each piece of the body to ``take``; 408 when none comes for ``stall_seconds``.

    One deadline, moved on by every piece: a timer per piece would cost a task each.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(stall_seconds) as deadline:
            async for piece in request.stream():
                take(piece)
                deadline.reschedule(loop.time() + stall_seconds)
    except TimeoutError as exc:
        raise _stalled(stall_seconds) from exc


def _stalled(stall_seconds: float) -> errors.RequestTimeout:
    return errors.RequestTimeout(
        f"the body stalled for over {stall_seconds:g} s; the connection is closed"
    )


async def read_body(
    request: Request, *, limit: int, stall_seconds: float, what: str = "JSON body"
) -> bytes:
    """The request body, or 413 as soon as it passes ``limit`` bytes."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large(what, limit)
    parts: list[bytes] = []
    received = 0

    def take(part: bytes) -> None:
        nonlocal received
        received += len(part)
        if received > limit:
            raise _too_large(what, limit)
        parts.append(part)

    await _consume(request, stall_seconds, take)
    return b"".join(parts)


def _too_large(what: str, limit: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"the {what} is over the {limit}-byte limit; send large vectors as raw bytes "
        "(Content-Type: application/octet-stream), which have no such limit",
        limit=limit,
    )


async def json_model(
    request: Request, model: type[Model], *, limit: int, stall_seconds: float
) -> Model:
    """A JSON body validated as ``model``, or 413/415/422 saying what is wrong."""
    negotiation.body_kind(request.headers.get("content-type"))
    return validate(model, await read_body(request, limit=limit, stall_seconds=stall_seconds))


def validate(model: type[Model], body: bytes) -> Model:
    """A JSON object body as ``model``, or 422 listing every problem."""
    document = negotiation.json_object(body)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise validation_problem(exc.errors()) from exc


def _check_length(nbytes: int, itemsize: int, size: int, field: str, whose: str) -> None:
    if nbytes == 0:
        raise errors.InvalidVector("the request body is empty; a binary vector was expected")
    if nbytes % itemsize:
        raise errors.InvalidVector(
            f"the body has {nbytes} bytes, not a multiple of the {itemsize}-byte element",
            itemsize=itemsize,
        )
    if nbytes != size * itemsize:
        raise errors.WrongSize(
            f"{field!r} has {nbytes // itemsize} elements; {whose} {size}",
            field=field,
            expected_size=size,
            actual_size=nbytes // itemsize,
        )


async def _binary_vector(
    request: Request,
    dtype: np.dtype[np.floating],
    size: int,
    field: str,
    stall_seconds: float,
    whose: str,
) -> FloatArray:
    """Raw bytes straight into an array of the expected size: a body of another length
    is refused before it is read (Content-Length) or as soon as it passes the size."""
    expected = size * dtype.itemsize
    declared = declared_length(request)
    if declared is not None:
        _check_length(declared, dtype.itemsize, size, field, whose)

    def too_long(_: int) -> errors.WrongSize:
        return errors.WrongSize(
            f"{field!r} is longer than the {size} elements expected",
            field=field,
            expected_size=size,
        )

    buffer, received = await _read_into(request, expected, stall_seconds, too_long)
    _check_length(received, dtype.itemsize, size, field, whose)
    return np.frombuffer(buffer, dtype=dtype)


async def _read_into(
    request: Request,
    expected: int,
    stall_seconds: float,
    too_long: Callable[[int], errors.AdamhubError],
) -> tuple[memoryview, int]:
    """A body read into a buffer of ``expected`` bytes, and how many came; ``too_long``
    (of the bytes so far) is raised as soon as it passes them."""
    # Not zeroed: every byte kept is written, and only those are read.
    view = np.empty(expected, np.uint8).data
    direct = request.scope.get("extensions", {}).get(DIRECT_BODY)
    if direct is not None:
        readinto: ReadInto = direct["readinto"]
        try:
            arrived = await readinto(view, stall_seconds)
        except TimeoutError as exc:
            raise _stalled(stall_seconds) from exc
        if arrived is None:
            raise ClientDisconnect
        if arrived > expected:
            raise too_long(arrived)
        return view, arrived
    received = 0

    def take(part: bytes) -> None:
        nonlocal received
        if received + len(part) > expected:
            raise too_long(received + len(part))
        view[received : received + len(part)] = part
        received += len(part)

    await _consume(request, stall_seconds, take)
    return view, received


async def received_gradient(
    request: Request,
    record: SessionRecord,
    dtype_header: str | None,
    *,
    json_limit: int,
    stall_seconds: float,
    size: int | None = None,
) -> FloatArray | Int8Blocks:
    """A gradient as it arrived: as ``received_vector``, or 8-bit blocks
    (``Adamhub-Dtype: int8-block4096``), kept as they came."""
    kind = negotiation.body_kind(request.headers.get("content-type"))
    if kind == BINARY and negotiation.gradient_wire(dtype_header) == INT8_BLOCKS:
        expected = record.size if size is None else size
        data = await _quantized_body(request, expected, stall_seconds)
        return Int8Blocks.from_wire(data, expected)
    return await received_vector(
        request,
        record,
        "gradient",
        dtype_header,
        json_limit=json_limit,
        stall_seconds=stall_seconds,
        size=size,
    )


async def _quantized_body(request: Request, size: int, stall_seconds: float) -> memoryview:
    """The bytes of an ``int8-block4096`` body of ``size`` elements; one of another
    length is refused before it is read (Content-Length) or once it passes the length."""
    expected = quantized_bytes(size)
    field = "gradient"

    def wrong(nbytes: int) -> errors.WrongSize:
        return errors.WrongSize(
            f"an {INT8_BLOCKS} {field!r} of {size} elements has {expected} bytes "
            f"(4 per block of {BLOCK_ELEMENTS}, then 1 per element), not {nbytes}",
            field=field,
            expected_size=size,
        )

    declared = declared_length(request)
    if declared is not None and declared != expected:
        raise wrong(declared)
    buffer, received = await _read_into(request, expected, stall_seconds, wrong)
    if received != expected:
        raise wrong(received)
    return buffer


async def vector_body(
    request: Request,
    record: SessionRecord,
    field: str,
    dtype_header: str | None,
    *,
    json_limit: int,
    stall_seconds: float,
) -> FloatArray:
    """A vector of the session's size and dtype: raw bytes, or JSON ``{field: [...]}``."""
    received = await received_vector(
        request,
        record,
        field,
        dtype_header,
        json_limit=json_limit,
        stall_seconds=stall_seconds,
    )
    return negotiation.conform(received, size=record.size, dtype=record.dtype, field=field)


async def received_vector(
    request: Request,
    record: SessionRecord,
    field: str,
    dtype_header: str | None,
    *,
    json_limit: int,
    stall_seconds: float,
    size: int | None = None,
) -> FloatArray:
    """A vector as it arrived (its wire dtype; float64 from JSON), of the session's size
    (or ``size``: a partial step's) when binary; ``negotiation.conform`` checks and
    converts it."""
    kind = negotiation.body_kind(request.headers.get("content-type"))
    if kind == BINARY:
        dtype = negotiation.wire_dtype(dtype_header, record.dtype)
        expected = record.size if size is None else size
        whose = "the session has" if size is None else "the step's segments have"
        vector = await _binary_vector(request, dtype, expected, field, stall_seconds, whose)
        if dtype == negotiation.BFLOAT16_BITS:
            return negotiation.widen_bfloat16(vector.view(np.uint16))
        return vector
    body = await read_body(request, limit=json_limit, stall_seconds=stall_seconds)
    document = negotiation.json_object(body)
    if field not in document:
        raise errors.InvalidVector(f"the body has no {field!r} member", field=field)
    extra = sorted(set(document) - {field})
    if extra:
        raise errors.InvalidVector(f"unknown members {extra}; only {field!r} is expected")
    return negotiation.vector_from_json(document[field], field)
