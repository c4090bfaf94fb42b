"""The mean gradient of a round: weighted, in float64, in the recorded order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adamhub_service.optim import kernel, weighted_mean


def numpy_mean(contributions: list[tuple[int, np.ndarray]], dtype: str) -> np.ndarray:
    """The same sum as separate numpy operations, in the same order."""
    acc = np.zeros(contributions[0][1].size)
    for samples, gradient in contributions:
        acc = acc + gradient.astype(np.float64) * np.float64(samples)
    return (acc / sum(n for n, _ in contributions)).astype(dtype)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 3000),
    st.lists(st.integers(1, 10_000), min_size=1, max_size=6),
    st.sampled_from(["float16", "float32", "float64"]),
    st.sampled_from(["float32", "float64"]),
    st.integers(0, 2**32 - 1),
)
def test_equals_the_numpy_sum_bit_for_bit(
    size: int, samples: list[int], wire: str, dtype: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    contributions = [(n, rng.normal(size=size).astype(wire)) for n in samples]
    assert np.array_equal(weighted_mean(contributions, dtype), numpy_mean(contributions, dtype))


def test_weights_and_float64_accumulation() -> None:
    a, b, c = (np.array([x], dtype=np.float32) for x in (1e8, 1.0, -1e8))
    # In float32, 1e8 + 1 loses the 1; summed in float64 it stays.
    assert weighted_mean([(1, a), (1, b), (1, c)], "float32") == np.float32(1 / 3)
    assert weighted_mean([(3, b), (1, a)], "float64") == (3 + 1e8) / 4
    assert weighted_mean([(5, b)], "float32").dtype == np.float32


@pytest.mark.parametrize("wire", ["float16", "float32", "float64"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("count", [1, 2, 5])
def test_a_long_vector_through_the_kernel_equals_the_numpy_sum_to_the_bit(
    wire: str, dtype: str, count: int
) -> None:
    """Past SERIAL_ELEMENTS the sum runs in one pass per contribution on the thread
    pool: the same bits, signed zeros included (0 + −0 is +0)."""
    rng = np.random.default_rng(count)
    size = kernel.SERIAL_ELEMENTS * 2 + 17
    contributions = []
    for samples in (7, 1, 300, 2, 9)[:count]:
        gradient = rng.normal(size=size).astype(wire)
        gradient[::5] = -0.0
        contributions.append((samples, gradient))
    mean = weighted_mean(contributions, dtype)
    assert mean.dtype == np.dtype(dtype)
    assert mean.tobytes() == numpy_mean(contributions, dtype).tobytes()
    assert not np.signbit(mean[::5]).any()
