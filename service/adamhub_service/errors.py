"""The service's domain errors: one base class, rendered as problem+json in one place.

Every kind of error has a stable ``type`` URI, ``ERROR_TYPE_BASE + slug``; clients
branch on it, never on ``detail``.
"""

from __future__ import annotations

from typing import Any, ClassVar

ERROR_TYPE_BASE = "https://adamhub.dev/errors/"


class AdamhubError(Exception):
    """Base of every error the service reports to a client.

    Subclasses fix ``status``, ``slug`` and ``title``; an instance carries the
    human ``detail`` and any extra problem members (``index``, ``expected_size``, …).
    """

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers = headers or {}

    @property
    def type_uri(self) -> str:
        """The stable URI naming this kind of error."""
        return ERROR_TYPE_BASE + self.slug

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body


class BadRequest(AdamhubError):
    """A request the service cannot read at all."""

    status = 400
    slug = "bad-request"
    title = "Bad request"


class NotFound(AdamhubError):
    """No such resource (or not the caller's)."""

    status = 404
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

    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class StepConflict(AdamhubError):
    """Concurrent writers kept winning the compare-and-set; the step was not applied."""

    status = 409
    slug = "step-conflict"
    title = "Too many concurrent updates"


class PayloadTooLarge(AdamhubError):
    """The body is over the configured limit."""

    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(AdamhubError):
    """A Content-Type or Adamhub-Dtype the service does not take."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class Unprocessable(AdamhubError):
    """Well-formed but invalid content."""

    status = 422
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
    """The update would make the parameters or moments non-finite."""

    slug = "non-finite-update"
    title = "Update would be non-finite"


class InvalidHyperparameters(Unprocessable):
    """Optimizer settings out of range, or a request body that fails validation."""

    slug = "validation-error"
    title = "Validation error"


class IdempotencyKeyReused(Unprocessable):
    """An Idempotency-Key already used with a different gradient."""

    slug = "idempotency-key-reused"
    title = "Idempotency key reused"


class StoreUnavailable(AdamhubError):
    """The store did not answer in time; nothing was changed."""

    status = 503
    slug = "store-unavailable"
    title = "Store unavailable"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class InvalidHeader(Unprocessable):
    """A request header with a value the service cannot use."""

    slug = "invalid-header"
    title = "Invalid header"
