"""A round's gradient from its contributions: the samples-weighted mean, or a robust
aggregate that one bad worker cannot drag far (coordinate-wise trimmed mean and median,
Yin et al. 2018; centered clipping, Karimireddy, He & Jaggi 2021).

Every aggregate is computed in float64 from the contributions in their recorded order
and rounded once to the session dtype, with no data-dependent order of operations
beyond sorting: the same contributions give the same bits. (A replayed round does not
recompute it: the log keeps the round's aggregate.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from adamhub_service.optim.adam import FloatArray
from adamhub_service.optim.averaging import weighted_mean

Aggregate = Literal["mean", "trimmed_mean", "median", "centered_clip"]
AGGREGATES: tuple[Aggregate, ...] = ("mean", "trimmed_mean", "median", "centered_clip")
DEFAULT_TRIM = 0.2
# Centered clipping's fixed-point iterations from the median (the paper uses 1 to 3).
CLIP_ITERATIONS = 3


def _stacked(gradients: Sequence[FloatArray]) -> FloatArray:
    """The contributions as rows of one float64 matrix, in order."""
    stacked = np.empty((len(gradients), gradients[0].size), dtype=np.float64)
    for row, gradient in zip(stacked, gradients, strict=True):
        row[:] = gradient
    return stacked


def trimmed_mean(gradients: Sequence[FloatArray], trim: float) -> FloatArray:
    """Per coordinate: cut floor(trim·n) of the n values from each end, average the
    rest (float64)."""
    stacked = _stacked(gradients)
    cut = math.floor(trim * len(gradients))
    stacked.sort(axis=0)
    kept = stacked[cut : len(gradients) - cut]
    total = np.zeros(stacked.shape[1], dtype=np.float64)
    for row in kept:  # in sorted order, one row at a time: a fixed order of additions
        total += row
    result: FloatArray = total / kept.shape[0]
    return result


def median(gradients: Sequence[FloatArray]) -> FloatArray:
    """Per coordinate: the median of the n values (the mean of the middle two for an
    even n), float64."""
    stacked = _stacked(gradients)
    stacked.sort(axis=0)
    n = len(gradients)
    if n % 2:
        result: FloatArray = stacked[n // 2].copy()
        return result
    middle: FloatArray = (stacked[n // 2 - 1] + stacked[n // 2]) / 2
    return middle


def centered_clip(gradients: Sequence[FloatArray], radius: float) -> FloatArray:
    """Centered clipping: from the coordinate-wise median v, ``CLIP_ITERATIONS`` times
    v ← v + (1/n)·Σ (gᵢ − v)·min(1, τ/‖gᵢ − v‖₂), τ = ``radius`` (float64)."""
    stacked = _stacked(gradients)
    center = median(gradients)
    n = len(gradients)
    for _ in range(CLIP_ITERATIONS):
        step = np.zeros_like(center)
        for row in stacked:
            difference = row - center
            norm = math.sqrt(float(np.dot(difference, difference)))
            scale = 1.0 if norm <= radius else radius / norm
            step += difference * scale
        center = center + step / n
    return center


def aggregate(
    contributions: Sequence[tuple[int, FloatArray]],
    dtype: str,
    *,
    kind: Aggregate = "mean",
    trim: float = DEFAULT_TRIM,
    clip_radius: float | None = None,
) -> FloatArray:
    """The round's gradient of ``(samples, gradient)`` contributions, in ``dtype``: the
    samples-weighted mean, or a robust aggregate (which weighs every contribution the
    same: a worker cannot buy weight by claiming samples)."""
    if kind == "mean":
        return weighted_mean(contributions, dtype)
    gradients = [gradient for _, gradient in contributions]
    if kind == "trimmed_mean":
        result = trimmed_mean(gradients, trim)
    elif kind == "median":
        result = median(gradients)
    else:
        assert clip_radius is not None, "centered_clip needs a clip radius"
        result = centered_clip(gradients, clip_radius)
    with np.errstate(over="ignore"):
        return result.astype(dtype)
