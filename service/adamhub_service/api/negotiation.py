"""Content negotiation: request bodies to validated arrays, arrays to response bodies.

Binary vectors are raw little-endian bytes read with ``np.frombuffer`` (no copy); JSON
is parsed with orjson, which refuses ``NaN``/``Infinity`` literals and numbers that
overflow a double, as RFC 8259 asks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from adamhub_service import errors
from adamhub_service.api import headers
from adamhub_service.model.quantized import INT8_BLOCKS
from adamhub_service.optim import FloatArray

JSON = "application/json"
BINARY = "application/octet-stream"
PROBLEM_JSON = "application/problem+json"
WIRE_DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32", "float64")
# A gradient may also come 8-bit (``model/quantized.py``): a quarter of float32's bytes.
GRADIENT_DTYPES: tuple[str, ...] = (*WIRE_DTYPES, INT8_BLOCKS)
# bfloat16 travels as the high 16 bits of a float32; numpy has no bfloat16, so its
# elements are read as these and widened (exactly) to float32.
BFLOAT16_BITS = np.dtype("<u2")


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header (lower case, no parameters)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def body_kind(content_type: str | None) -> str:
    """``JSON`` or ``BINARY``, or 415 for anything else."""
    kind = media_type(content_type)
    if kind == JSON or (kind.startswith("application/") and kind.endswith("+json")):
        return JSON
    if kind == BINARY:
        return BINARY
    shown = kind or "none"
    raise errors.UnsupportedMediaType(
        f"Content-Type {shown!r} is not supported; send {JSON} or {BINARY}",
        supported=[JSON, BINARY],
    )


def _named_dtype(
    header: str | None, allowed: tuple[str, ...], header_name: str, refused: str
) -> str | None:
    """The dtype a header names (None when absent); 415 for one not ``allowed``."""
    if header is None:
        return None
    name = header.strip().lower()
    if name not in allowed:
        raise errors.UnsupportedMediaType(
            f"{header_name} {header!r} {refused}; use one of {', '.join(allowed)}",
            supported=list(allowed),
        )
    return name


def wire_dtype(header: str | None, session_dtype: str) -> np.dtype[Any]:
    """The element type of a binary body: the Adamhub-Dtype header or the session's."""
    name = _named_dtype(header, WIRE_DTYPES, headers.DTYPE, "is not supported") or session_dtype
    if name == "bfloat16":
        return BFLOAT16_BITS
    return np.dtype(name).newbyteorder("<")


def gradient_wire(header: str | None) -> str | None:
    """The wire dtype a gradient's ``Adamhub-Dtype`` names (None: the session's); 415
    for one the service does not take."""
    return _named_dtype(header, GRADIENT_DTYPES, headers.DTYPE, "is not supported for a gradient")


def gradient_itemsize(header: str | None) -> int | None:
    """Bytes per element of a gradient's wire dtype (about 1 for 8-bit blocks); None
    for the session's own."""
    name = gradient_wire(header)
    if name is None:
        return None
    return 1 if name == INT8_BLOCKS else wire_dtype(name, "float32").itemsize


def widen_bfloat16(bits: npt.NDArray[np.uint16]) -> FloatArray:
    """bfloat16 elements (their 16 bits) as float32: exact."""
    widened: FloatArray = (bits.astype(np.uint32) << 16).view(np.float32)
    return widened


def narrow_to_bfloat16(vector: FloatArray) -> npt.NDArray[np.uint16]:
    """A vector rounded to bfloat16 (to nearest, ties to even), as its 16 bits."""
    bits = np.ascontiguousarray(vector, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    narrowed: npt.NDArray[np.uint16] = ((bits + rounding) >> 16).astype("<u2")
    return narrowed


def answer_dtype(header: str | None) -> str | None:
    """The dtype a binary answer is asked for in (``Adamhub-Accept-Dtype``), or None for
    the session's; 415 for one the service does not send."""
    return _named_dtype(header, WIRE_DTYPES, headers.ACCEPT_DTYPE, "is not one the service sends")


def answer_vector(vector: FloatArray, dtype: str | None) -> tuple[memoryview, str]:
    """A binary answer's bytes in ``dtype`` (None: the vector's own), and the dtype they
    are in: the vector's own when ``dtype`` cannot hold its values (float16 beyond
    ±65504)."""
    if dtype == "bfloat16":
        return narrow_to_bfloat16(vector).data.cast("B"), "bfloat16"
    if dtype is not None and dtype != vector.dtype.name:
        with np.errstate(over="ignore"):
            converted = vector.astype(np.dtype(dtype).newbyteorder("<"))
        if np.isfinite(converted).all():
            return converted.data.cast("B"), dtype
    return vector_bytes(vector), vector.dtype.name


def wants_binary(accept: str | None) -> bool:
    """Whether the Accept header prefers raw bytes to JSON."""
    best_json = best_binary = -1.0
    for part in (accept or "").split(","):
        kind, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if kind.lower() == BINARY:
            best_binary = max(best_binary, quality)
        elif kind.lower() in (JSON, "application/*", "*/*"):
            best_json = max(best_json, quality)
    return best_binary > 0 and best_binary > best_json


def parse_json(body: bytes) -> Any:
    """A JSON document, or 422 naming what is wrong with it."""
    if not body.strip():
        raise errors.MalformedJson("the request body is empty; a JSON document was expected")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        rest = body[exc.pos : exc.pos + 9].lstrip(b"-")
        if rest.startswith((b"NaN", b"Infinity")):
            raise errors.NonFiniteValue(
                f"JSON has no NaN or Infinity (character {exc.pos}); every number must be finite",
                position=exc.pos,
            ) from exc
        if "infinity" in str(exc):
            raise errors.NonFiniteValue(
                f"a number beyond the range of a 64-bit float (character {exc.pos}); "
                "every number must be finite",
                position=exc.pos,
            ) from exc
        raise errors.MalformedJson(f"the body is not valid JSON: {exc}", position=exc.pos) from exc


def json_object(body: bytes) -> dict[str, Any]:
    """A JSON object body, or 422."""
    document = parse_json(body)
    if not isinstance(document, dict):
        raise errors.MalformedJson(f"the body must be a JSON object, not {type(document).__name__}")
    return document


def vector_from_json(value: Any, field: str) -> FloatArray:
    """A JSON array of numbers as a float64 vector, or 422 naming ``field``."""
    if not isinstance(value, list):
        raise errors.InvalidVector(
            f"{field!r} must be an array of numbers, not {_json_type(value)}", field=field
        )
    if not value:
        raise errors.InvalidVector(f"{field!r} is empty", field=field)
    array = np.array(value) if _all_plain_numbers(value) else None
    if array is None or array.ndim != 1 or array.dtype.kind not in "fiu":
        index = _first_non_number(value)
        raise errors.InvalidVector(
            f"{field!r} must be a flat array of numbers; element {index} is "
            f"{_json_type(value[index])}",
            field=field,
            index=index,
        )
    return array.astype(np.float64, copy=False)


def vector_from_bytes(body: bytes, dtype: np.dtype[np.floating]) -> FloatArray:
    """A binary body as a vector of ``dtype`` (no copy), or 422."""
    if not body:
        raise errors.InvalidVector("the request body is empty; a binary vector was expected")
    if len(body) % dtype.itemsize:
        raise errors.InvalidVector(
            f"the body has {len(body)} bytes, not a multiple of the {dtype.itemsize}-byte "
            f"{dtype.name} element",
            itemsize=dtype.itemsize,
        )
    return np.frombuffer(body, dtype=dtype)


def conform(vector: FloatArray, *, size: int | None, dtype: str, field: str) -> FloatArray:
    """``vector`` in ``dtype``, checked for length (when ``size`` is given) and finiteness."""
    if size is not None and vector.size != size:
        raise errors.WrongSize(
            f"{field!r} has {vector.size} elements; the session has {size}",
            field=field,
            expected_size=size,
            actual_size=int(vector.size),
        )
    target = np.dtype(dtype)
    if vector.dtype.itemsize > target.itemsize:
        # Narrowing: a value beyond the target's largest is refused even where it would
        # round down to it, as the OpenAPI schema says (|x| ≤ float32's max).
        fits = np.abs(vector) <= np.finfo(target).max
        if not fits.all():
            raise _not_finite(vector, int(np.argmin(fits)), field, dtype)
    with np.errstate(over="ignore"):
        converted = vector.astype(dtype, copy=False)
    finite = np.isfinite(converted)
    if not finite.all():
        raise _not_finite(vector, int(np.argmin(finite)), field, dtype)
    return converted


def _not_finite(vector: FloatArray, index: int, field: str, dtype: str) -> errors.NonFiniteValue:
    what = "is not finite" if not np.isfinite(vector[index]) else f"overflows {dtype}"
    return errors.NonFiniteValue(
        f"element {index} of {field!r} {what}; every element must be a finite number",
        field=field,
        index=index,
    )


def dump_json(document: Any) -> bytes:
    """A JSON document, numpy arrays included, as bytes."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def vector_bytes(vector: FloatArray) -> memoryview:
    """The raw little-endian bytes of a vector, without a copy where it has them (the
    response sends them from the array, which is never changed once computed)."""
    little = np.ascontiguousarray(vector, dtype=vector.dtype.newbyteorder("<"))
    return little.data.cast("B")


def _all_plain_numbers(values: list[Any]) -> bool:
    # bool is a subclass of int: refuse it instead of reading true as 1.
    kinds = set(map(type, values))
    return kinds <= {float, int}


def _first_non_number(values: list[Any]) -> int:
    for index, item in enumerate(values):
        if type(item) not in (float, int) or (type(item) is int and abs(item) >= 2**63):
            return index
    return 0


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


def etag(head: str) -> str:
    """The ETag of a stored version (its write id, quoted)."""
    return f'"{head}"'


def if_none_match_heads(if_none_match: str | None) -> frozenset[str]:
    """The versions named by an If-None-Match header (``*`` included)."""
    if if_none_match is None:
        return frozenset()
    tags = (tag.strip().removeprefix("W/").strip('"') for tag in if_none_match.split(","))
    return frozenset(tag for tag in tags if tag)
