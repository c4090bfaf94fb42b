"""How much request and working memory this process takes on at once.

Each request that carries or makes vectors holds a share of ``max_inflight_bytes``
while it runs. One that would pass the budget waits, before its body is read, for
others to finish; if the budget stays full for ``wait_seconds`` it is answered 503
``overloaded``. A single request larger than the whole budget runs when nothing else is
held, so that the largest session a service allows can always step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from adamhub_service import errors


class InflightBudget:
    """A counter of bytes held by running requests, bounded by ``limit``."""

    def __init__(self, limit: int, *, wait_seconds: float) -> None:
        self.limit = limit
        self.wait_seconds = wait_seconds
        self.held = 0
        self._changed = asyncio.Condition()

    def _fits(self, nbytes: int) -> bool:
        return self.held == 0 or self.held + nbytes <= self.limit

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the body of the ``async with``."""
        async with self._changed:
            # Most requests fit at once: they wait for nothing (no timer, no task).
            if not self._fits(nbytes):
                try:
                    async with asyncio.timeout(self.wait_seconds):
                        await self._changed.wait_for(lambda: self._fits(nbytes))
                except TimeoutError as exc:
                    raise errors.Overloaded(
                        f"this process holds {self.held} of its {self.limit} bytes for "
                        f"requests in flight and this one needs {nbytes}; retry shortly",
                        retry_after=1,
                    ) from exc
            self.held += nbytes
        try:
            yield
        finally:
            async with self._changed:
                self.held -= nbytes
                self._changed.notify_all()


def vector_request_bytes(size: int, wire_itemsize: int, itemsize: int, vectors: int) -> int:
    """What a step or a parameter write holds: the body, its conversion to the session
    dtype, the state read from the store and the new state."""
    return size * (wire_itemsize + itemsize + 2 * vectors * itemsize)
