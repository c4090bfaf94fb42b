"""The service's domain errors: one base class, no HTTP in it.

Every kind of error has a stable ``slug``; the API renders it as a problem document
whose ``type`` is ``ERROR_TYPE_BASE + slug`` (clients branch on it, never on
``detail``) and maps each kind to its HTTP status in one table (``api/problems.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar

ERROR_TYPE_BASE = "https://adamhub.dev/errors/"


class AdamhubError(Exception):
    """Base of every error the service reports to a client.

    Subclasses fix ``slug`` and ``title``; an instance carries the human ``detail``,
    any extra problem members (``index``, ``expected_size``, …) and, when a retry
    may succeed, ``retry_after`` in seconds.
    """

    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, retry_after: int | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.retry_after = retry_after

    @property
    def type_uri(self) -> str:
        """The stable URI naming this kind of error."""
        return ERROR_TYPE_BASE + self.slug


class BadRequest(AdamhubError):
    """A request the service cannot read at all."""

    slug = "bad-request"
    title = "Bad request"


class NotFound(AdamhubError):
    """No such resource (or not the caller's)."""

    slug = "not-found"
    title = "Not found"


class SessionNotFound(NotFound):
    """The session does not exist, or is another tenant's."""

    slug = "session-not-found"
    title = "Session not found"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"there is no session {session_id!r}", session_id=session_id)


class MethodNotAllowed(AdamhubError):
    """The resource exists but does not take this method."""

    slug = "method-not-allowed"
    title = "Method not allowed"


class StepConflict(AdamhubError):
    """Concurrent writers kept winning the compare-and-set; the change was not applied."""

    slug = "step-conflict"
    title = "Too many concurrent updates"


class HistoryUnavailable(AdamhubError):
    """A rollback's step is older than what the session keeps (or not reached yet)."""

    slug = "history-unavailable"
    title = "That step is not kept"


class StaleGradient(AdamhubError):
    """A gradient computed at parameters this session is past (or never had)."""

    slug = "stale-gradient"
    title = "Stale gradient"


class SizeChanged(AdamhubError):
    """A gradient of the session's size before param groups were added to it: the
    worker must add them too (``size``, ``segments``: the session as it is now)."""

    slug = "size-changed"
    title = "The session has grown"


class PayloadTooLarge(AdamhubError):
    """The body is over the configured limit."""

    slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(AdamhubError):
    """A Content-Type or Adamhub-Dtype the service does not take."""

    slug = "unsupported-media-type"
    title = "Unsupported media type"


class Unprocessable(AdamhubError):
    """Well-formed but invalid content."""

    slug = "invalid-request"
    title = "Invalid request"


class MalformedJson(Unprocessable):
    """A body that is not JSON."""

    slug = "malformed-json"
    title = "Malformed JSON"


class InvalidVector(Unprocessable):
    """A vector that is not a flat array of numbers."""

    slug = "invalid-vector"
    title = "Invalid vector"


class WrongSize(Unprocessable):
    """A vector whose length is not the session's size."""

    slug = "wrong-size"
    title = "Wrong vector size"


class NonFiniteValue(Unprocessable):
    """A NaN or infinite element (or a number too large for the dtype)."""

    slug = "non-finite-value"
    title = "Non-finite value"


class NonFiniteUpdate(Unprocessable):
    """The update would make a parameter or a moment non-finite; nothing was applied."""

    slug = "non-finite-update"
    title = "Update would be non-finite"

    def __init__(self, vector: str, index: int) -> None:
        super().__init__(
            f"this gradient would make element {index} of {vector} non-finite; nothing was applied",
            vector=vector,
            index=index,
        )
        self.vector = vector
        self.index = index


class RoundDropped(NonFiniteUpdate):
    """A round whose mean gradient would make the state non-finite: it was dropped,
    with its contributions; the next round starts from the same t."""

    def __init__(self, detail: str) -> None:
        Unprocessable.__init__(self, detail)


class OutlierGradient(Unprocessable):
    """A gradient whose norm is beyond the session's screening bound; nothing was
    applied (``norm``, ``bound``)."""

    slug = "outlier-gradient"
    title = "Outlier gradient"


class ValidationFailed(Unprocessable):
    """A request body or parameter that fails validation (every problem listed)."""

    slug = "validation-error"
    title = "Validation error"


class InvalidCheckpoint(Unprocessable):
    """An imported file that is not an adamhub checkpoint (or not a consistent one)."""

    slug = "invalid-checkpoint"
    title = "Invalid checkpoint"


class IdempotencyKeyReused(Unprocessable):
    """An Idempotency-Key already used with a different gradient."""

    slug = "idempotency-key-reused"
    title = "Idempotency key reused"


class InvalidHeader(Unprocessable):
    """A request header with a value the service cannot use."""

    slug = "invalid-header"
    title = "Invalid header"


class StoreUnavailable(AdamhubError):
    """The store did not answer in time; nothing was changed."""

    slug = "store-unavailable"
    title = "Store unavailable"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, retry_after=retry_after)


class OutcomeUnknown(AdamhubError):
    """The store stopped answering after a write was sent: it may have been applied."""

    slug = "outcome-unknown"
    title = "Outcome unknown"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, retry_after=retry_after)


class Overloaded(AdamhubError):
    """This process holds as much request memory as it may; nothing was done."""

    slug = "overloaded"
    title = "Overloaded"


class Unauthorized(AdamhubError):
    """No key, or a key the service does not know (unknown, expired or revoked)."""

    slug = "unauthorized"
    title = "Unauthorized"


class Forbidden(AdamhubError):
    """The key may see the resource but not do this to it."""

    slug = "forbidden"
    title = "Forbidden"


class ProtectedMode(Forbidden):
    """Without a master key only loopback clients are served."""

    slug = "protected-mode"
    title = "Protected mode"


class WorkerQuarantined(Forbidden):
    """A worker refused too many times in a row by the session's screening (``worker``,
    ``until``)."""

    slug = "worker-quarantined"
    title = "Worker quarantined"


class QuotaExceeded(Forbidden):
    """The tenant is at one of its limits; nothing was created."""

    slug = "quota-exceeded"
    title = "Quota exceeded"


class RateLimited(AdamhubError):
    """The key sent more requests than its rate allows; nothing was done."""

    slug = "rate-limited"
    title = "Rate limited"


class KeyNotFound(NotFound):
    """No such API key (or not the caller's tenant's)."""

    slug = "key-not-found"
    title = "Key not found"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"there is no key {key_id!r}", key_id=key_id)


class RequestTimeout(AdamhubError):
    """The body stalled; the connection is closed."""

    slug = "request-timeout"
    title = "Request timeout"


class HeadersTooLarge(AdamhubError):
    """The request's headers are over the limit."""

    slug = "headers-too-large"
    title = "Request header fields too large"


class HostNotAllowed(BadRequest):
    """A Host header this service does not answer to (DNS rebinding protection)."""

    slug = "host-not-allowed"
    title = "Host not allowed"
