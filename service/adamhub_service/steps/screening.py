"""Screening the gradients workers send: outliers refused, repeat offenders quarantined.

A gradient whose L2 norm exceeds ``max_norm_ratio`` × the median norm of the session's
last ``window`` accepted gradients (once that many are accepted) is refused with 422
``outlier-gradient``, as is one that is not finite; each refusal counts against its
worker, and ``quarantine_after`` of them in a row quarantine it (403
``worker-quarantined``) for ``quarantine_seconds``. A refusal changes nothing but the
worker's record. Other workers go on untouched.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson

from adamhub_service import errors
from adamhub_service.model.records import SessionRecord, rfc3339
from adamhub_service.model.repositories import ScreenRepository
from adamhub_service.model.settings import ScreenRule
from adamhub_service.model.stored import ScreenView
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import FloatArray
from adamhub_service.optim.kernel import squared_norm

logger = logging.getLogger("adamhub.steps")


@dataclass(frozen=True, slots=True)
class Admitted:
    """A worker let in by screening, and what its gradient is judged against."""

    rule: ScreenRule
    worker: str
    view: ScreenView


def _until(ms: int) -> str:
    return rfc3339(datetime.fromtimestamp(ms / 1000, UTC))


class Screening:
    """The screening of a session's gradients, on its screening record."""

    def __init__(self, repository: ScreenRepository, metrics: Metrics) -> None:
        self._repository = repository
        self._metrics = metrics

    async def admit(self, record: SessionRecord, worker: str) -> Admitted | None:
        """Let the worker send a gradient (None when the session screens nothing); 403
        ``worker-quarantined`` while it is quarantined."""
        rule = record.settings.screen
        if rule is None:
            return None
        view = await self._repository.look(record.id, worker, rule.window)
        if view.quarantined_until_ms is not None:
            self._metrics.screened.labels("quarantined").inc()
            until = _until(view.quarantined_until_ms)
            raise errors.WorkerQuarantined(
                f"worker {worker!r} is quarantined until {until}: its gradients were refused "
                f"{rule.quarantine_after} times in a row. The session's owner can end it "
                f"(DELETE …/quarantine/{worker})",
                worker=worker,
                until=until,
            )
        return Admitted(rule, worker, view)

    async def judge(self, record: SessionRecord, admitted: Admitted, gradient: FloatArray) -> float:
        """The gradient's norm, when it is within the bound; else count the refusal and
        raise 422 ``outlier-gradient``."""
        norm = math.sqrt(squared_norm(np.ascontiguousarray(gradient)))
        rule, norms = admitted.rule, admitted.view.norms
        if len(norms) < rule.window:
            return norm
        bound = rule.max_norm_ratio * statistics.median(norms)
        if norm <= bound:
            return norm
        self._metrics.screened.labels("outlier").inc()
        until = await self._refuse(record, admitted, "outlier", norm=norm, bound=bound)
        detail = (
            f"this gradient's norm {norm:.6g} is over {rule.max_norm_ratio:g} × the median "
            f"of the last {rule.window} accepted ({bound:.6g}); nothing was applied"
        )
        if until is not None:
            detail += f"; worker {admitted.worker!r} is now quarantined until {until}"
        raise errors.OutlierGradient(detail, norm=norm, bound=bound, worker=admitted.worker)

    async def refuse_non_finite(self, record: SessionRecord, admitted: Admitted) -> None:
        """Count a gradient that is not finite against its worker."""
        self._metrics.screened.labels("non_finite").inc()
        await self._refuse(record, admitted, "non_finite")

    def accept(self, record: SessionRecord, admitted: Admitted, norm: float) -> asyncio.Task[None]:
        """Count a gradient that passed screening (its norm joins the window), while it
        is applied: the caller awaits the task before answering, so a worker's next
        gradient is judged with it."""
        self._metrics.screened.labels("accepted").inc()
        return asyncio.create_task(self._record(record, admitted, norm))

    async def _record(self, record: SessionRecord, admitted: Admitted, norm: float) -> None:
        # The gradient's own answer never depends on this record: a store failure here
        # costs the window one norm, never a step's outcome.
        try:
            await self._repository.accept(record.id, admitted.worker, norm, admitted.rule.window)
        except (errors.StoreUnavailable, errors.OutcomeUnknown) as exc:
            logger.warning("the norm of an accepted gradient was not recorded: %s", exc)

    async def _refuse(
        self,
        record: SessionRecord,
        admitted: Admitted,
        reason: str,
        *,
        norm: float | None = None,
        bound: float | None = None,
    ) -> str | None:
        event = orjson.dumps(
            {"worker": admitted.worker, "reason": reason, "norm": norm, "bound": bound}
        ).decode()
        rule = admitted.rule
        until = await self._repository.refuse(
            record.id,
            admitted.worker,
            event,
            quarantine_after=rule.quarantine_after,
            quarantine_ms=int(rule.quarantine_seconds * 1000),
        )
        return None if until is None else _until(until)
