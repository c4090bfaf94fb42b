"""The optimiser as pure numpy functions: no I/O, no HTTP."""

from adamhub_service.optim.adam import (
    BETA,
    EPS,
    FINAL_LR_RATIO,
    GROUP_FIELDS,
    LR,
    MAX_GRAD_NORM,
    SCHEDULE_KINDS,
    WEIGHT_DECAY,
    AdamConfig,
    AdamState,
    Bound,
    FloatArray,
    ParamGroup,
    Schedule,
    adam_step,
    init_state,
)

__all__ = [
    "BETA",
    "EPS",
    "FINAL_LR_RATIO",
    "GROUP_FIELDS",
    "LR",
    "MAX_GRAD_NORM",
    "SCHEDULE_KINDS",
    "WEIGHT_DECAY",
    "AdamConfig",
    "AdamState",
    "Bound",
    "FloatArray",
    "ParamGroup",
    "Schedule",
    "adam_step",
    "init_state",
]
