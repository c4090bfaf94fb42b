"""What the sync and async clients share: settings, requests, retries, errors.

A request is described once (``RequestSpec``); the sync and async faces only differ in
how they send it and how they sleep between attempts.
"""

from __future__ import annotations

import email.utils
import math
import os
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypedDict, TypeVar, Unpack

import httpx

from adamhub._errors import (
    AdamhubError,
    APIConnectionError,
    APITimeoutError,
    error_class,
    problem_of,
    status_error,
)
from adamhub._version import __version__

DEFAULT_BASE_URL = "http://localhost:8000"
DEFAULT_TIMEOUT: httpx.Timeout = httpx.Timeout(60.0, connect=5.0)
DEFAULT_MAX_RETRIES = 3
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
ROUND_WAIT_SECONDS = 30.0


# Bodies larger than this go out in pieces of this size: httpx sends one large bytes
# object several times slower than the same bytes as an iterator of slices
# (encode/httpx#3660, encode/httpcore#1029).
BODY_PIECE_BYTES = 1 << 20

Retry = Literal["always", "unsent"]


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One API call, independent of how it is sent.

    ``retry="always"`` for calls that are safe to repeat (reads, idempotent writes,
    steps with an Idempotency-Key); ``"unsent"`` for calls that may only be repeated
    when they surely changed nothing (session creation). ``direct``: a hot call (a
    step, a parameter read) the sync client may send over its direct lane
    (``_direct.py``).
    """

    method: str
    path: str
    json: Any = None
    # A memoryview (a vector's bytes where they lie) is sent as it is, not copied.
    content: bytes | memoryview | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    retry: Retry = "always"
    direct: bool = False


class ClientOptions(TypedDict, total=False):
    """The options both clients take, besides ``base_url`` and ``http_client``."""

    api_key: str | None
    timeout: float | httpx.Timeout
    max_retries: int
    initial_retry_delay: float
    max_retry_delay: float
    gradient_dtype: str | None
    worker: str | None
    answer_dtype: str | None


H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class BaseClient(Generic[H]):
    """Settings and retry policy of a client, and its httpx client (``http_client``, or
    one of its own, closed with it)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        http_client: H | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        url = base_url or os.environ.get("ADAMHUB_BASE_URL") or DEFAULT_BASE_URL
        self.base_url = url.rstrip("/")
        api_key = options.get("api_key")
        self.api_key = api_key if api_key is not None else os.environ.get("ADAMHUB_API_KEY")
        self.timeout = options.get("timeout", DEFAULT_TIMEOUT)
        self.max_retries = options.get("max_retries", DEFAULT_MAX_RETRIES)
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.initial_retry_delay = options.get("initial_retry_delay", INITIAL_RETRY_DELAY)
        self.max_retry_delay = options.get("max_retry_delay", MAX_RETRY_DELAY)
        self.gradient_dtype = options.get("gradient_dtype")
        # The dtype the sessions ask their parameters to come in ("bfloat16", "float16").
        self.answer_dtype = options.get("answer_dtype")
        # The name this client's steps are recorded under (default: the API key's id).
        self.worker = options.get("worker") or os.environ.get("ADAMHUB_WORKER")
        # A contribution or long-poll waits on the server at most this long, so that
        # it answers before the read timeout.
        read = self.timeout.read if isinstance(self.timeout, httpx.Timeout) else self.timeout
        self.round_wait_seconds = (
            ROUND_WAIT_SECONDS if read is None else min(ROUND_WAIT_SECONDS, read / 2)
        )
        self._own_http = http_client is None
        self._http: H = self._new_http() if http_client is None else http_client

    def _new_http(self) -> H:
        """An httpx client of this face, with this client's timeout."""
        raise NotImplementedError

    def _default_headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"adamhub-python/{__version__}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _build_request(
        self, http: httpx.Client | httpx.AsyncClient, spec: RequestSpec
    ) -> httpx.Request:
        """The request of one attempt (a large body is streamed anew for every attempt)."""
        headers = {**self._default_headers(), **spec.headers}
        content: bytes | Iterator[bytes] | AsyncIterator[bytes] | None
        if spec.content is not None and len(spec.content) > BODY_PIECE_BYTES:
            # With Content-Length given, httpx sends the pieces as one plain body.
            headers["Content-Length"] = str(len(spec.content))
            content = (
                _async_pieces(spec.content)
                if isinstance(http, httpx.AsyncClient)
                else _pieces(spec.content)
            )
        else:
            # httpx takes bytes (it would iterate a memoryview number by number).
            content = bytes(spec.content) if isinstance(spec.content, memoryview) else spec.content
        return http.build_request(
            spec.method,
            f"{self.base_url}{spec.path}",
            json=spec.json,
            content=content,
            headers=headers,
            params=dict(spec.params),
            timeout=self.timeout,
        )

    def _retry_after_error(self, spec: RequestSpec, error: httpx.TransportError) -> bool:
        if spec.retry == "always":
            return True
        return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)

    def _retry_after_response(self, spec: RequestSpec, response: httpx.Response) -> bool:
        """Whether the answer's problem type lets this request be sent again: when it
        is retryable, and (for a request that may only be repeated unsent) when it
        surely changed nothing."""
        kind = error_class(response.status_code, problem_of(response))
        if spec.retry == "unsent":
            return kind.retryable and kind.changed_nothing
        return kind.retryable

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Retry-After when the service sent it, else exponential backoff, full jitter."""
        if response is not None:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is not None:
                return retry_after
        ceiling = min(self.max_retry_delay, self.initial_retry_delay * 2**attempt)
        return random.uniform(0, ceiling)

    def _outcome(
        self,
        spec: RequestSpec,
        attempt: int,
        request: httpx.Request,
        result: httpx.Response | httpx.TransportError,
    ) -> httpx.Response | float:
        """The response to return, or the delay before the next attempt; raises otherwise."""
        can_retry = attempt < self.max_retries
        if isinstance(result, httpx.TimeoutException):
            if can_retry and self._retry_after_error(spec, result):
                return self._retry_delay(attempt, None)
            raise APITimeoutError(request=request) from result
        if isinstance(result, httpx.TransportError):
            if can_retry and self._retry_after_error(spec, result):
                return self._retry_delay(attempt, None)
            raise APIConnectionError(
                f"could not reach the adamhub service: {result}", request=request
            ) from result
        if result.is_success or result.status_code == 304:
            return result
        if attempt and spec.method == "DELETE" and result.status_code == 404:
            return result  # an earlier attempt deleted it, and its answer was lost
        if can_retry and self._retry_after_response(spec, result):
            return self._retry_delay(attempt, result)
        raise status_error(result)


def _pieces(data: bytes | memoryview) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), BODY_PIECE_BYTES):
        yield view[start : start + BODY_PIECE_BYTES]  # type: ignore[misc]


async def _async_pieces(data: bytes | memoryview) -> AsyncIterator[bytes]:
    for piece in _pieces(data):
        yield piece


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), clamped to
    [0, 60]; None when it is missing or not a sane value."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = parsed.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


__all__ = ["AdamhubError", "BaseClient", "RequestSpec"]
