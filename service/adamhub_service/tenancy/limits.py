"""Rate limits per key, counted in Redis so that every replica shares them."""

from __future__ import annotations

import math

from adamhub_service import errors
from adamhub_service.model.repositories import RateRepository
from adamhub_service.observability.metrics import Metrics


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second, ``burst`` at once."""

    def __init__(self, store: RateRepository, metrics: Metrics, *, rate: float, burst: int) -> None:
        self._store = store
        self._metrics = metrics
        self.rate = rate
        self.burst = burst or max(1, math.ceil(rate))

    @property
    def enabled(self) -> bool:
        """Whether requests are limited at all (a rate of 0 is off and costs nothing)."""
        return self.rate > 0

    async def take(self, key_id: str) -> None:
        """Count a request of ``key_id``, or raise ``RateLimited``."""
        decision = await self._store.take_token(key_id, rate=self.rate, burst=self.burst)
        if not decision.allowed:
            self._metrics.rate_limited.inc()
            wait = max(1, math.ceil(decision.wait_seconds))
            raise errors.RateLimited(
                f"this key may send {self.rate:g} requests per second ({self.burst} at once); "
                f"retry in {wait} s",
                retry_after=wait,
                limit=self.burst,
                remaining=int(decision.remaining),
                window_seconds=max(1, math.ceil(self.burst / self.rate)),
            )
