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
    with_changes,
)
from adamhub_service.optim.aggregates import AGGREGATES, Aggregate, aggregate
from adamhub_service.optim.averaging import weighted_mean

__all__ = [
    "AGGREGATES",
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
    "Aggregate",
    "Bound",
    "FloatArray",
    "ParamGroup",
    "Schedule",
    "adam_step",
    "aggregate",
    "init_state",
    "weighted_mean",
    "with_changes",
]
