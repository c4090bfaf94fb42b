"""Content negotiation: bodies to arrays and back, whatever the values (property-based)."""

from __future__ import annotations

import struct
from typing import Literal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from adamhub_service import errors
from adamhub_service.api import negotiation

finite64 = st.floats(allow_nan=False, allow_infinity=False)
vectors64 = hnp.arrays(np.float64, st.integers(1, 64), elements=finite64)


@given(vectors64)
def test_json_vectors_round_trip_exactly(vector: np.ndarray) -> None:
    body = negotiation.dump_json({"gradient": vector})
    parsed = negotiation.vector_from_json(negotiation.json_object(body)["gradient"], "gradient")
    assert parsed.dtype == np.float64
    assert np.array_equal(parsed, vector)


WIDTHS: dict[str, Literal[16, 32, 64]] = {"float16": 16, "float32": 32, "float64": 64}


@given(st.sampled_from(list(WIDTHS)), st.data())
def test_binary_vectors_round_trip_exactly(dtype: str, data: st.DataObject) -> None:
    elements = st.floats(width=WIDTHS[dtype], allow_nan=False, allow_infinity=False)
    vector = data.draw(hnp.arrays(dtype, st.integers(1, 64), elements=elements))
    parsed = negotiation.vector_from_bytes(
        bytes(negotiation.vector_bytes(vector)), negotiation.wire_dtype(dtype, "float32")
    )
    assert np.array_equal(parsed, vector)


@given(vectors64, st.data())
def test_conform_names_the_first_non_finite_element(
    vector: np.ndarray, data: st.DataObject
) -> None:
    bad = data.draw(st.lists(st.integers(0, vector.size - 1), min_size=1, unique=True))
    vector = vector.copy()
    vector[bad] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    with pytest.raises(errors.NonFiniteValue) as caught:
        negotiation.conform(vector, size=vector.size, dtype="float64", field="gradient")
    assert caught.value.extra["index"] == min(bad)


@given(vectors64)
def test_conform_refuses_values_beyond_float32(vector: np.ndarray) -> None:
    beyond = np.abs(vector) > np.finfo(np.float32).max
    if beyond.any():
        with pytest.raises(errors.NonFiniteValue) as caught:
            negotiation.conform(vector, size=None, dtype="float32", field="params")
        assert caught.value.extra["index"] == int(np.argmax(beyond))
    else:
        assert (
            negotiation.conform(vector, size=None, dtype="float32", field="params").dtype
            == np.float32
        )


@pytest.mark.parametrize(
    ("accept", "binary"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("application/octet-stream", True),
        ("application/json;q=0.5, application/octet-stream", True),
        ("application/octet-stream;q=0.2, application/json", False),
        ("application/octet-stream;q=0", False),
    ],
)
def test_accept_negotiation(accept: str | None, binary: bool) -> None:
    assert negotiation.wants_binary(accept) is binary


def bfloat16_reference(value: float) -> float:
    """float32 → bfloat16, rounded to nearest, ties to even (struct, bit by bit)."""
    (bits,) = struct.unpack("<I", struct.pack("<f", value))
    upper, lower = bits >> 16, bits & 0xFFFF
    if lower > 0x8000 or (lower == 0x8000 and upper & 1):
        upper += 1
    (rounded,) = struct.unpack("<f", struct.pack("<I", upper << 16))
    return float(rounded)


@given(
    hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(-(2.0**100), 2.0**100, width=32))
)
def test_bfloat16_rounds_to_nearest_even_and_widens_exactly(vector: np.ndarray) -> None:
    narrowed = negotiation.narrow_to_bfloat16(vector)
    widened = negotiation.widen_bfloat16(narrowed)
    assert widened.tolist() == [bfloat16_reference(float(v)) for v in vector]
    # A bfloat16 value goes through as itself.
    assert np.array_equal(negotiation.narrow_to_bfloat16(widened), narrowed)


def test_a_float16_answer_falls_back_when_it_cannot_hold_the_values() -> None:
    small = np.array([1.5, -2.0], np.float32)
    data, dtype = negotiation.answer_vector(small, "float16")
    assert (dtype, np.frombuffer(data, "<f2").tolist()) == ("float16", [1.5, -2.0])
    large = np.array([1.5, 1e6], np.float32)
    data, dtype = negotiation.answer_vector(large, "float16")
    assert (dtype, np.frombuffer(data, "<f4").tolist()) == ("float32", [1.5, 1e6])
