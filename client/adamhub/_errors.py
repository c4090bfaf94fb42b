"""The SDK's exceptions: one root, connection errors, a class per HTTP status, and a
class per problem type the service sends (a subclass of its status's class).

Whether a failed request may be sent again follows its problem type: ``retryable``
(trying again may succeed) and ``changed_nothing`` (the service surely changed nothing,
so even a request without an Idempotency-Key may be sent again). ``outcome-unknown``
is retryable but never "changed nothing". The service's types and the table here are
checked equal by a test.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

__all__ = [
    "PROBLEM_TYPES",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AdamhubError",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "ConflictError",
    "GatewayTimeoutError",
    "HeadersTooLargeError",
    "HistoryUnavailableError",
    "HostNotAllowedError",
    "IdempotencyKeyReusedError",
    "InternalServerError",
    "InvalidCheckpointError",
    "InvalidHeaderError",
    "InvalidVectorError",
    "KeyNotFoundError",
    "MalformedJsonError",
    "MethodNotAllowedError",
    "NonFiniteUpdateError",
    "NonFiniteValueError",
    "NotFoundError",
    "OutcomeUnknownError",
    "OutlierGradientError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProtectedModeError",
    "QuotaExceededError",
    "RateLimitError",
    "RequestTimeoutError",
    "ServiceUnavailableError",
    "SessionNotFoundError",
    "SizeChangedError",
    "StaleGradientError",
    "StepConflictError",
    "StoreUnavailableError",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
    "ValidationFailedError",
    "WorkerQuarantinedError",
    "WrongSizeError",
]


class AdamhubError(Exception):
    """The root of every error the SDK raises."""


class APIConnectionError(AdamhubError):
    """The service could not be reached, or the connection broke before an answer."""

    def __init__(
        self,
        message: str = "could not reach the adamhub service",
        *,
        request: httpx.Request | None = None,
    ) -> None:
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError):
    """The request timed out."""

    def __init__(self, *, request: httpx.Request | None = None) -> None:
        super().__init__("the request to the adamhub service timed out", request=request)


# Every problem type the service sends, by the last part of its type URI; and the class
# of an error answer without a type we know (a proxy's), by status. Filled as the
# classes below are declared.
PROBLEM_TYPES: dict[str, type[APIStatusError]] = {}
BY_STATUS: dict[int, type[APIStatusError]] = {}


class APIStatusError(AdamhubError):
    """The service answered with an error status (4xx or 5xx).

    ``type`` is the problem type URI (``https://adamhub.dev/errors/…``), stable per kind
    of error; ``detail`` a sentence for people; ``problem`` the whole problem document.
    """

    status_code: int
    # The status of the class's problems (0: any), and what a retry may do.
    status: ClassVar[int] = 0
    retryable: ClassVar[bool] = False
    changed_nothing: ClassVar[bool] = False

    def __init_subclass__(
        cls,
        *,
        slug: str | None = None,
        status: int | None = None,
        retryable: bool | None = None,
        changed_nothing: bool | None = None,
    ) -> None:
        """Declare a class: its problem type (``slug``), its status (a status's own
        class), and what a retry may do (else as its base)."""
        super().__init_subclass__()
        if status is not None:
            cls.status = status
            BY_STATUS[status] = cls
        if retryable is not None:
            cls.retryable = retryable
        if changed_nothing is not None:
            cls.changed_nothing = changed_nothing
        if slug is not None:
            PROBLEM_TYPES[slug] = cls

    def __init__(self, message: str, *, response: httpx.Response, problem: dict[str, Any]) -> None:
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code
        self.problem = problem
        self.type: str | None = problem.get("type")
        self.title: str | None = problem.get("title")
        self.detail: str | None = problem.get("detail")


class BadRequestError(APIStatusError, slug="bad-request", status=400):
    """400 ``bad-request``: the request cannot be read."""


class HostNotAllowedError(BadRequestError, slug="host-not-allowed"):
    """400 ``host-not-allowed``: a Host header the service does not answer to."""


class AuthenticationError(APIStatusError, slug="unauthorized", status=401):
    """401 ``unauthorized``: a missing or wrong API key."""


class PermissionDeniedError(APIStatusError, slug="forbidden", status=403):
    """403 ``forbidden``: the key does not grant this action."""


class ProtectedModeError(PermissionDeniedError, slug="protected-mode"):
    """403 ``protected-mode``: without a master key, the service serves its own machine."""


class WorkerQuarantinedError(PermissionDeniedError, slug="worker-quarantined"):
    """403 ``worker-quarantined``: the session's screening refused this worker's
    gradients too many times in a row; ``problem["until"]`` is when it ends."""


class QuotaExceededError(PermissionDeniedError, slug="quota-exceeded"):
    """403 ``quota-exceeded``: the tenant is at a limit (``problem["quota"]``,
    ``"limit"``, ``"current"``); nothing was created."""


class NotFoundError(APIStatusError, slug="not-found", status=404):
    """404 ``not-found``: no such resource (or not yours)."""


class SessionNotFoundError(NotFoundError, slug="session-not-found"):
    """404 ``session-not-found``: no such session (or not yours)."""


class KeyNotFoundError(NotFoundError, slug="key-not-found"):
    """404 ``key-not-found``: no such API key (or not your tenant's)."""


class MethodNotAllowedError(APIStatusError, slug="method-not-allowed", status=405):
    """405 ``method-not-allowed``: the resource does not take this method."""


class RequestTimeoutError(APIStatusError, slug="request-timeout", status=408, retryable=True):
    """408 ``request-timeout``: the body stalled; a request that is safe to repeat is
    sent again."""


class ConflictError(APIStatusError, status=409):
    """409: the request conflicts with the session's state (see the subclasses)."""


class StepConflictError(ConflictError, slug="step-conflict", retryable=True, changed_nothing=True):
    """409 ``step-conflict``: concurrent updates kept winning and nothing was changed;
    retried automatically."""


class HistoryUnavailableError(ConflictError, slug="history-unavailable"):
    """409 ``history-unavailable``: a rollback to a step the session no longer keeps;
    ``problem["oldest_t"]`` is the oldest it keeps."""


class StaleGradientError(ConflictError, slug="stale-gradient"):
    """409 ``stale-gradient``: the gradient was computed at parameters the session is past
    by more than its ``max_staleness`` (or never had). ``params`` holds the newest
    parameters, fetched for the next gradient; ``problem["t"]`` is the session's t."""

    params: Any = None


class SizeChangedError(ConflictError, slug="size-changed"):
    """409 ``size-changed``: param groups were added to the session since this worker
    learnt its size; ``problem["size"]`` and ``problem["segments"]`` are the session's
    now. Add the same groups on this worker (or attach again)."""


class PayloadTooLargeError(APIStatusError, slug="payload-too-large", status=413):
    """413 ``payload-too-large``: the body is over the service's limit."""


class UnsupportedMediaTypeError(APIStatusError, slug="unsupported-media-type", status=415):
    """415 ``unsupported-media-type``: a content type or dtype the service does not take."""


class UnprocessableEntityError(APIStatusError, slug="invalid-request", status=422):
    """422 ``invalid-request``: invalid content; nothing was changed. Its subclasses
    name the kind: a body that is not JSON (``MalformedJsonError``), a vector that is
    not one (``InvalidVectorError``), of the wrong size (``WrongSizeError``), with a
    non-finite element (``NonFiniteValueError``), an update that would not be finite
    (``NonFiniteUpdateError``), failed validation (``ValidationFailedError``: every
    problem in ``problem["errors"]``), a file that is not a checkpoint
    (``InvalidCheckpointError``), an Idempotency-Key used with another request
    (``IdempotencyKeyReusedError``), a header the service cannot use
    (``InvalidHeaderError``: ``problem["header"]``)."""


class MalformedJsonError(UnprocessableEntityError, slug="malformed-json"): ...


class InvalidVectorError(UnprocessableEntityError, slug="invalid-vector"): ...


class WrongSizeError(UnprocessableEntityError, slug="wrong-size"): ...


class NonFiniteValueError(UnprocessableEntityError, slug="non-finite-value"): ...


class NonFiniteUpdateError(UnprocessableEntityError, slug="non-finite-update"): ...


class ValidationFailedError(UnprocessableEntityError, slug="validation-error"): ...


class OutlierGradientError(UnprocessableEntityError, slug="outlier-gradient"):
    """422 ``outlier-gradient``: the gradient's norm (``problem["norm"]``) is over the
    session's screening bound (``problem["bound"]``); nothing was applied."""


class InvalidCheckpointError(UnprocessableEntityError, slug="invalid-checkpoint"): ...


class IdempotencyKeyReusedError(UnprocessableEntityError, slug="idempotency-key-reused"): ...


class InvalidHeaderError(UnprocessableEntityError, slug="invalid-header"): ...


class RateLimitError(
    APIStatusError, slug="rate-limited", status=429, retryable=True, changed_nothing=True
):
    """429 ``rate-limited``: over the key's rate; nothing was done. Retried after
    ``Retry-After``."""


class HeadersTooLargeError(APIStatusError, slug="headers-too-large", status=431):
    """431 ``headers-too-large``: the request's headers are over the limit."""


class InternalServerError(APIStatusError, slug="internal-error", status=500):
    """500 ``internal-error`` (and any 5xx without a class of its own)."""


class BadGatewayError(InternalServerError, status=502, retryable=True):
    """502 from a proxy in front of the service; retried."""


class GatewayTimeoutError(InternalServerError, status=504, retryable=True):
    """504 from a proxy in front of the service; retried."""


class ServiceUnavailableError(InternalServerError, status=503, retryable=True):
    """503: the service cannot take the request now; retried. The subclasses say
    whether anything may have changed."""


class StoreUnavailableError(
    ServiceUnavailableError, slug="store-unavailable", changed_nothing=True
):
    """503 ``store-unavailable``: the store did not answer; nothing was changed."""


class OverloadedError(ServiceUnavailableError, slug="overloaded", changed_nothing=True):
    """503 ``overloaded``: the service holds too much in flight; nothing was done."""


class OutcomeUnknownError(ServiceUnavailableError, slug="outcome-unknown"):
    """503 ``outcome-unknown``: the store stopped answering after a write was sent, so it
    may have been applied. Retried only with the same Idempotency-Key (which the service
    answers as a replay if it was applied); never "nothing changed"."""


def problem_slug(problem: dict[str, Any]) -> str:
    """The last part of a problem document's type URI."""
    return str(problem.get("type", "")).rsplit("/", 1)[-1]


def error_class(status: int, problem: dict[str, Any]) -> type[APIStatusError]:
    """The exception class of an error answer: by its problem type, else by status."""
    kind = PROBLEM_TYPES.get(problem_slug(problem)) or BY_STATUS.get(status)
    if kind is None:
        kind = InternalServerError if status >= 500 else APIStatusError
    return kind


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The problem document of an error answer ({} when it has none)."""
    try:
        problem = response.json()
    except ValueError:
        return {}
    return problem if isinstance(problem, dict) else {}


def status_error(response: httpx.Response) -> APIStatusError:
    """The exception for an error response, carrying its problem document."""
    problem = problem_of(response)
    kind = error_class(response.status_code, problem)
    detail = problem.get("detail") or response.reason_phrase
    return kind(f"{response.status_code}: {detail}", response=response, problem=problem)
