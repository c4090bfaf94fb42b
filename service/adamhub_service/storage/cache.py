"""The newest state of recently used sessions, kept in this process.

An entry is only a hint: every write still goes through the store's fencing
compare-and-set, which fails when another process changed the session meanwhile.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from adamhub_service.model.stored import CachedSession

logger = logging.getLogger("adamhub_service.storage")


class StateCache:
    """A least-recently-used map of session id to ``CachedSession``, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedSession] = OrderedDict()
        self._bytes = 0
        # The sessions too big to cache, told once each.
        self._told: set[str] = set()

    def get(self, session_id: str) -> CachedSession | None:
        """The cached entry, if any, marked as just used."""
        entry = self._entries.get(session_id)
        if entry is not None:
            self._entries.move_to_end(session_id)
        return entry

    def put(self, entry: CachedSession) -> None:
        """Cache ``entry``, evicting the least recently used ones past the bound."""
        self.drop(entry.record.id)
        if entry.nbytes > self._max_bytes:
            if entry.record.id not in self._told:
                self._told.add(entry.record.id)
                logger.warning(
                    "session %s's state (%d bytes) is larger than this process's cache "
                    "(ADAMHUB_CACHE_BYTES=%d): each of its steps reads it back from the "
                    "store; a cache larger than the state avoids that",
                    entry.record.id,
                    entry.nbytes,
                    self._max_bytes,
                )
            return
        self._entries[entry.record.id] = entry
        self._bytes += entry.nbytes
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes

    def drop(self, session_id: str) -> None:
        """Forget a session."""
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._bytes -= entry.nbytes

    @property
    def nbytes(self) -> int:
        """The bytes held now."""
        return self._bytes
