"""Robust aggregates of a round held to a plain-Python reading of their definitions."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adamhub_service.optim import aggregate
from adamhub_service.optim.aggregates import CLIP_ITERATIONS


def columns(gradients: list[np.ndarray]) -> list[list[float]]:
    return [[float(g[i]) for g in gradients] for i in range(gradients[0].size)]


def reference_trimmed_mean(gradients: list[np.ndarray], trim: float) -> list[float]:
    cut = math.floor(trim * len(gradients))
    kept = [sorted(column)[cut : len(gradients) - cut] for column in columns(gradients)]
    return [math.fsum(values) / len(values) for values in kept]


def reference_centered_clip(gradients: list[np.ndarray], radius: float) -> list[float]:
    center = [statistics.median(column) for column in columns(gradients)]
    for _ in range(CLIP_ITERATIONS):
        moved = [0.0] * len(center)
        for g in gradients:
            difference = [float(x) - c for x, c in zip(g, center, strict=True)]
            norm = math.sqrt(math.fsum(d * d for d in difference))
            scale = min(1.0, radius / norm) if norm else 1.0
            moved = [m + d * scale for m, d in zip(moved, difference, strict=True)]
        center = [c + m / len(gradients) for c, m in zip(center, moved, strict=True)]
    return center


vectors = st.integers(min_value=1, max_value=9).flatmap(
    lambda n: st.lists(
        st.lists(st.floats(-1e6, 1e6), min_size=4, max_size=4), min_size=n, max_size=n
    )
)


@settings(max_examples=60, deadline=None)
@given(vectors, st.sampled_from([0.0, 0.1, 0.2, 0.34, 0.49]))
def test_trimmed_mean_cuts_floor_trim_n_from_each_end(rows: list[list[float]], trim: float) -> None:
    gradients = [np.array(row) for row in rows]
    ours = aggregate([(1, g) for g in gradients], "float64", kind="trimmed_mean", trim=trim)
    np.testing.assert_allclose(ours, reference_trimmed_mean(gradients, trim), rtol=1e-12, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(vectors)
def test_median_is_the_coordinate_wise_median(rows: list[list[float]]) -> None:
    gradients = [np.array(row) for row in rows]
    ours = aggregate([(7, g) for g in gradients], "float64", kind="median")
    expected = [statistics.median(column) for column in columns(gradients)]
    np.testing.assert_allclose(ours, expected, rtol=1e-15, atol=0)


@settings(max_examples=40, deadline=None)
@given(vectors, st.sampled_from([0.5, 10.0, 1e5]))
def test_centered_clip_follows_its_fixed_point_iteration(
    rows: list[list[float]], radius: float
) -> None:
    gradients = [np.array(row) for row in rows]
    ours = aggregate(
        [(1, g) for g in gradients], "float64", kind="centered_clip", clip_radius=radius
    )
    expected = reference_centered_clip(gradients, radius)
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "options"),
    [("trimmed_mean", {"trim": 0.2}), ("median", {}), ("centered_clip", {"clip_radius": 1.0})],
)
def test_one_bad_worker_cannot_drag_a_robust_aggregate(
    kind: str, options: dict[str, float]
) -> None:
    rng = np.random.default_rng(0)
    honest = [rng.normal(1.0, 0.1, size=1000).astype(np.float32) for _ in range(6)]
    bad = np.full(1000, 1e6, dtype=np.float32)
    contributions = [(1, g) for g in [*honest, bad]]
    robust = aggregate(contributions, "float32", kind=kind, **options)  # type: ignore[arg-type]
    mean = aggregate(contributions, "float32")
    assert abs(float(mean.mean()) - 1.0) > 1e5  # the plain mean follows the bad worker
    assert abs(float(robust.mean()) - 1.0) < 0.2
    # The same contributions give the same bits.
    again = aggregate(contributions, "float32", kind=kind, **options)  # type: ignore[arg-type]
    assert robust.tobytes() == again.tobytes()
