"""The optimiser as pure numpy functions: no I/O, no HTTP."""

from adamhub_service.optim.adam import (
    BETA,
    EPS,
    LR,
    WEIGHT_DECAY,
    AdamConfig,
    AdamState,
    Bound,
    FloatArray,
    adam_step,
    init_state,
)

__all__ = [
    "BETA",
    "EPS",
    "LR",
    "WEIGHT_DECAY",
    "AdamConfig",
    "AdamState",
    "Bound",
    "FloatArray",
    "adam_step",
    "init_state",
]
