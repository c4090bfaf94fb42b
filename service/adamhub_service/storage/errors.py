"""Store failures as the domain's errors, saying whether a write may have happened."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adamhub_service.errors import OutcomeUnknown, StoreUnavailable

logger = logging.getLogger("adamhub_service.storage")

# Replies with which Redis refuses a command without running it.
_REFUSALS = (
    "OOM", "READONLY", "MISCONF", "LOADING", "BUSY", "MASTERDOWN", "NOREPLICAS",
    "CLUSTERDOWN", "TRYAGAIN", "NOSCRIPT", "MOVED", "ASK",
)  # fmt: skip


def _refusal(exc: ResponseError) -> str | None:
    """The kind of refusal of a command Redis did not run, or None for another error."""
    for kind, name in (
        (OutOfMemoryError, "OOM"),
        (ReadOnlyError, "READONLY"),
        (BusyLoadingError, "LOADING"),
        # A cluster's redirections, when the client's own retries did not end them.
        (ClusterDownError, "CLUSTERDOWN"),
        (TryAgainError, "TRYAGAIN"),
        (MovedError, "MOVED"),
        (AskError, "ASK"),
    ):
        if isinstance(exc, kind):
            return name
    first = str(exc).split(" ", 1)[0]
    return first if first in _REFUSALS else None


def never_sent(exc: BaseException) -> bool:
    """Whether the error happened before any command was sent: while connecting, or
    while waiting for a free connection of the pool."""
    return isinstance(exc, MaxConnectionsError) or "connecting to" in str(exc).lower()


@asynccontextmanager
async def unavailable_on_error(*, write: bool = False) -> AsyncIterator[None]:
    """Turn store failures into ``StoreUnavailable`` (nothing was changed) or, when a
    ``write`` was sent and no answer came, ``OutcomeUnknown``.

    The store's address and error text are logged, never sent to clients.
    """
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        logger.warning("the store did not answer: %s", exc)
        if write and not never_sent(exc):
            raise OutcomeUnknown(
                "the store stopped answering after the change was sent, so it may have "
                "been applied: retry with the same Idempotency-Key, or read the session"
            ) from exc
        raise StoreUnavailable("the store did not answer; nothing was changed") from exc
    except ResponseError as exc:
        refusal = _refusal(exc)
        if refusal is not None:
            logger.warning("the store refused a command: %s", exc)
            raise StoreUnavailable(
                f"the store refused the command ({refusal}); nothing was changed"
            ) from exc
        raise
    except (RedisClusterUnreachableError, SlotNotCoveredError) as exc:
        # A cluster client that reaches no node, or none serving the key's slot: it sent
        # nothing.
        logger.warning("the store's cluster did not answer: %s", exc)
        raise StoreUnavailable("the store did not answer; nothing was changed") from exc
    except RedisError as exc:
        logger.warning("the store failed: %s", exc)
        raise StoreUnavailable("the store failed; nothing was changed") from exc
