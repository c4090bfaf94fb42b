"""Deleting the sessions that asked to expire when idle (``expires_after_idle_seconds``).

Every process runs a sweep now and then; the deletes are fenced by ``rev``, so replicas
sweeping together delete a session once, and a session stepped meanwhile is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from adamhub_service import errors
from adamhub_service.model.outcomes import WriteStatus
from adamhub_service.model.records import parse_rfc3339
from adamhub_service.model.repositories import (
    ExpiryRepository,
    SessionRepository,
    TenantRepository,
)

logger = logging.getLogger("adamhub.sessions")


def idle_seconds(updated_at: str, now: datetime) -> float:
    """Seconds since an RFC 3339 ``updated_at``."""
    return (now - parse_rfc3339(updated_at)).total_seconds()


class Janitor:
    """Sweeps the expiring sessions every ``every_seconds``."""

    def __init__(
        self,
        store: SessionRepository,
        expiry: ExpiryRepository,
        tenants: TenantRepository,
        *,
        every_seconds: float,
    ) -> None:
        self._store = store
        self._expiry = expiry
        self._tenants = tenants
        self._every = every_seconds

    async def run(self) -> None:
        """Sweep until cancelled; a sweep that fails is tried again at the next."""
        while True:
            await asyncio.sleep(self._every)
            with contextlib.suppress(errors.StoreUnavailable, errors.OutcomeUnknown):
                await self.sweep()

    async def sweep(self, now: datetime | None = None) -> list[str]:
        """Delete the indexed sessions idle past their time; the ids deleted."""
        now = now or datetime.now(UTC)
        deleted = []
        ids = await self._expiry.ids()
        for session_id, record in zip(ids, await self._store.read_records(ids), strict=True):
            expires = None if record is None else record.settings.expires_after_idle_seconds
            if record is None or expires is None:
                await self._expiry.track(session_id, expires=False)
                continue
            if idle_seconds(record.updated_at, now) < expires:
                continue
            status = await self._store.delete(record)
            if status is WriteStatus.COMMITTED:
                await self._tenants.release(record.tenant, session_id)
            if status is not WriteStatus.CONFLICT:  # deleted, or gone already
                await self._expiry.track(session_id, expires=False)
            if status is WriteStatus.COMMITTED:
                deleted.append(session_id)
                logger.info("session %s expired after %d s idle", session_id, expires)
        return deleted
