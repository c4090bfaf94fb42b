"""The SDK's exceptions: one root, connection errors, and one class per HTTP status."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AdamhubError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "HistoryUnavailableError",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "StaleGradientError",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
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


class APIStatusError(AdamhubError):
    """The service answered with an error status (4xx or 5xx).

    ``type`` is the problem type URI (``https://adamhub.dev/errors/…``), stable per kind
    of error; ``detail`` a sentence for people; ``problem`` the whole problem document.
    """

    status_code: int

    def __init__(self, message: str, *, response: httpx.Response, problem: dict[str, Any]) -> None:
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code
        self.problem = problem
        self.type: str | None = problem.get("type")
        self.title: str | None = problem.get("title")
        self.detail: str | None = problem.get("detail")


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401: a missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404: no such session (or not yours)."""


class ConflictError(APIStatusError):
    """409: concurrent updates kept winning; retried automatically."""


class HistoryUnavailableError(ConflictError):
    """409 ``history-unavailable``: a rollback to a step the session no longer keeps;
    ``problem["oldest_t"]`` is the oldest it keeps."""


class StaleGradientError(ConflictError):
    """409 ``stale-gradient``: the gradient was computed at parameters the session is past
    by more than its ``max_staleness`` (or never had). ``params`` holds the newest
    parameters, fetched for the next gradient; ``problem["t"]`` is the session's t."""

    params: Any = None


class PayloadTooLargeError(APIStatusError):
    """413: the body is over the service's limit."""


class UnsupportedMediaTypeError(APIStatusError):
    """415: a content type or dtype the service does not take."""


class UnprocessableEntityError(APIStatusError):
    """422: invalid values (wrong size, non-finite numbers, bad settings, reused key)."""


class RateLimitError(APIStatusError):
    """429."""


class InternalServerError(APIStatusError):
    """5xx."""


class ServiceUnavailableError(InternalServerError):
    """503: the service's store is unavailable; retried automatically."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}

# Problems with an exception of their own, by the last part of their type URI.
_BY_SLUG: dict[str, type[APIStatusError]] = {
    "history-unavailable": HistoryUnavailableError,
    "stale-gradient": StaleGradientError,
}


def status_error(response: httpx.Response) -> APIStatusError:
    """The exception for an error response, carrying its problem document."""
    try:
        problem = response.json()
        if not isinstance(problem, dict):
            problem = {}
    except ValueError:
        problem = {}
    slug = str(problem.get("type", "")).rsplit("/", 1)[-1]
    kind = _BY_SLUG.get(slug) or _BY_STATUS.get(response.status_code)
    if kind is None:
        kind = InternalServerError if response.status_code >= 500 else APIStatusError
    detail = problem.get("detail") or response.reason_phrase
    return kind(f"{response.status_code}: {detail}", response=response, problem=problem)
