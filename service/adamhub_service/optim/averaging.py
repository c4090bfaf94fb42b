"""The mean gradient of a round (synchronous data parallelism)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adamhub_service.optim.adam import FloatArray
from adamhub_service.optim.kernel import weighted_sum_into


def weighted_mean(contributions: Sequence[tuple[int, FloatArray]], dtype: str) -> FloatArray:
    """Σ nᵢ·gᵢ / Σ nᵢ of ``(nᵢ, gᵢ)``, in float64 and in the order given (a replica that
    computes it again gets the same bits), rounded once to ``dtype``."""
    # The kernels take float32 and float64 (float16 widens exactly).
    wide = [
        (samples, gradient.astype(np.float32) if gradient.dtype == np.float16 else gradient)
        for samples, gradient in contributions
    ]
    # The kernel rounds into float32 or float64; another dtype from the float64 mean.
    direct = np.dtype(dtype) in (np.float32, np.float64)
    mean = np.empty(wide[0][1].size, dtype if direct else np.float64)
    weighted_sum_into(mean, wide)
    return mean if direct else mean.astype(dtype)
