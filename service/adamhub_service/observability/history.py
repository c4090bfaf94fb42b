"""What each step records for watching training: a point of the session's history.

Points are stored with the step, in its commit (``lua/append.lua``), in a capped series
per session (``history_points``), and served by ``GET …/history`` and ``…/events``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import orjson

from adamhub_service.optim import AdamConfig, FloatArray
from adamhub_service.optim.kernel import squared_distance, squared_norm

# Below this many elements numpy's whole-array operations are cheaper than a launch of
# the compiled parallel loops (the norms here are for charts: any summation order does).
_SMALL = 1 << 16


@dataclass(frozen=True, slots=True)
class StepPoint:
    """One step as a chart sees it: its ``t`` and Unix ``time``, the learning rate it
    used (lr·f(t)), the global L2 norms of its gradient (before clipping) and of its
    update Δθ, the loss the worker reported, the steps between the parameters the
    gradient was computed at and those it was applied to, and the worker."""

    t: int
    time: float
    lr: float
    grad_norm: float
    update_norm: float
    loss: float | None = None
    staleness: int | None = None
    worker: str | None = None

    def encode(self) -> str:
        """As stored and served: a JSON object (orjson writes dataclasses natively)."""
        return orjson.dumps(self).decode()


def step_point(
    *,
    t: int,
    config: AdamConfig,
    gradient: FloatArray,
    before: FloatArray,
    after: FloatArray,
    loss: float | None = None,
    staleness: int | None = None,
    worker: str | None = None,
) -> StepPoint:
    """The point of step ``t``, which took ``before`` to ``after`` with ``gradient``."""
    return StepPoint(
        t=t,
        time=round(time.time(), 3),
        lr=config.lr * config.schedule.factor(t),
        grad_norm=math.sqrt(_squared_norm(gradient)),
        update_norm=math.sqrt(_squared_distance(after, before)),
        loss=loss,
        staleness=staleness,
        worker=worker,
    )


def _squared_norm(vector: FloatArray) -> float:
    if vector.size < _SMALL:
        return float(np.dot(vector, vector))
    return squared_norm(vector)


def _squared_distance(a: FloatArray, b: FloatArray) -> float:
    if a.size < _SMALL:
        difference = a - b
        return float(np.dot(difference, difference))
    return squared_distance(a, b)
