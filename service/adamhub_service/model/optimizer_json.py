"""An optimizer config as stored: compact JSON, and back (older forms included)."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from adamhub_service.optim import AdamConfig, ParamGroup, Schedule


def optimizer_json(config: AdamConfig) -> str:
    """A config as stored: compact JSON (no spaces, which separate a log entry's parts)."""
    return orjson.dumps(dataclasses.asdict(config)).decode()


def optimizer_from_json(values: dict[str, Any]) -> AdamConfig:
    """A stored optimizer config (records of 0.1.0 kept ``beta1`` and ``beta2``)."""
    if "beta1" in values:
        values["betas"] = (values.pop("beta1"), values.pop("beta2"))
    values["betas"] = tuple(values["betas"])
    if "schedule" in values:
        values["schedule"] = Schedule(**values["schedule"])
    groups = []
    for group in values.get("param_groups", ()):
        if group.get("betas") is not None:
            group["betas"] = tuple(group["betas"])
        groups.append(ParamGroup(**group))
    values["param_groups"] = tuple(groups)
    values["segment_sizes"] = tuple(values.get("segment_sizes", ()))
    return AdamConfig(**values)
