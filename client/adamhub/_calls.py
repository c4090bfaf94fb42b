"""API calls written once for both faces of the SDK.

A call is a generator: it yields each request it needs (a ``RequestSpec``), receives
the answer (or, thrown in, the error it raised), and returns its result. ``run_sync``
and ``run_async`` send the requests with a client's retries, the one blocking and the
other awaiting; nothing else differs between ``Session`` and ``AsyncSession``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Generic, TypeVar

import httpx

from adamhub._base_client import RequestSpec
from adamhub._errors import AdamhubError

T = TypeVar("T")
Call = Generator[RequestSpec, httpx.Response, T]


@dataclass(frozen=True, slots=True)
class _Done(Generic[T]):
    value: T


def _advance(
    call: Call[T], outcome: httpx.Response | AdamhubError | None
) -> RequestSpec | _Done[T]:
    """Give ``call`` the outcome of its last request (None: start it); its next request,
    or its result."""
    try:
        if outcome is None:
            return next(call)
        if isinstance(outcome, AdamhubError):
            return call.throw(outcome)
        return call.send(outcome)
    except StopIteration as done:
        return _Done(done.value)


def run_sync(request: Callable[[RequestSpec], httpx.Response], call: Call[T]) -> T:
    """Run ``call``, sending its requests with ``request``."""
    step = _advance(call, None)
    while isinstance(step, RequestSpec):
        outcome: httpx.Response | AdamhubError
        try:
            outcome = request(step)
        except AdamhubError as exc:
            outcome = exc
        step = _advance(call, outcome)
    return step.value


async def run_async(
    request: Callable[[RequestSpec], Awaitable[httpx.Response]], call: Call[T]
) -> T:
    """Run ``call``, sending its requests with ``request`` (awaited)."""
    step = _advance(call, None)
    while not isinstance(step, _Done):
        try:
            answer: httpx.Response | AdamhubError = await request(step)
        except AdamhubError as exc:
            answer = exc
        step = _advance(call, answer)
    return step.value


def one(spec: RequestSpec) -> Call[httpx.Response]:
    """The call of a single request: its answer."""
    response = yield spec
    return response
