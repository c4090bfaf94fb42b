"""The mean gradient of a round (synchronous data parallelism)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adamhub_service.optim.adam import FloatArray
from adamhub_service.optim.kernel import accumulate


def weighted_mean(contributions: Sequence[tuple[int, FloatArray]], dtype: str) -> FloatArray:
    """Σ nᵢ·gᵢ / Σ nᵢ of ``(nᵢ, gᵢ)``, in float64 and in the order given (a replica that
    computes it again gets the same bits), rounded once to ``dtype``."""
    total = sum(samples for samples, _ in contributions)
    acc = np.zeros(contributions[0][1].size, dtype=np.float64)
    for samples, gradient in contributions:
        if gradient.dtype == np.float16:  # the kernel takes float32 and float64 (exact)
            gradient = gradient.astype(np.float32)
        accumulate(acc, gradient, samples)
    acc /= total
    return acc.astype(dtype)
