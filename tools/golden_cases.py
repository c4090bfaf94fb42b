"""The optimiser cases held to torch: options, initial parameters and gradients.

The inputs are made here from fixed seeds, so the golden file stores only torch's
results; ``tools/make_golden.py`` writes it and the tests read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

STEPS = 1000
SIZE = 64
# The golden file, next to the optimiser tests that read it.
GOLDEN_FILE = Path(__file__).resolve().parents[1] / "tests/service/optim/golden/adam_torch.npz"
CHECKPOINT_STEPS = (1, 10, 100, STEPS)

OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "lr_0.1": {"lr": 0.1},
    "l2": {"weight_decay": 0.01},
    "adamw": {"weight_decay": 0.01, "decoupled_weight_decay": True},
    "amsgrad": {"amsgrad": True},
    "maximize": {"maximize": True},
    "adamw_amsgrad_maximize": {
        "lr": 0.01,
        "weight_decay": 0.1,
        "decoupled_weight_decay": True,
        "amsgrad": True,
        "maximize": True,
    },
    "betas_eps": {"betas": (0.5, 0.9), "eps": 1e-6},
    "l2_amsgrad": {"weight_decay": 0.05, "amsgrad": True},
    "beta1_zero": {"betas": (0.0, 0.99), "lr": 0.01},
}
DTYPES = ("float32", "float64")

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    f"{name}-{dtype}": (dtype, options)
    for name in OPTIONS
    for dtype in DTYPES
    for options in [OPTIONS[name]]
}


def case_inputs(case: str) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]:
    """Initial parameters (SIZE) and gradients (STEPS x SIZE) of a case, in its dtype.

    Gradient magnitudes span 1e-4..1e2 (log-uniform), with random signs.
    """
    dtype, _ = CASES[case]
    seed = sorted(CASES).index(case)
    rng = np.random.default_rng(seed)
    params = rng.normal(0.0, 1.0, SIZE)
    magnitudes = 10.0 ** rng.uniform(-4.0, 2.0, (STEPS, SIZE))
    signs = rng.choice([-1.0, 1.0], (STEPS, SIZE))
    return params.astype(dtype), (magnitudes * signs).astype(dtype)
