"""``Client`` and ``AsyncClient``: the entry points of the SDK."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, Unpack

import httpx
import numpy as np
import numpy.typing as npt

from adamhub import _headers as headers
from adamhub._api_keys import AsyncKeys, Keys
from adamhub._base_client import BaseClient, ClientOptions, RequestSpec
from adamhub._calls import Call, run_async, run_sync
from adamhub._config import AdamConfig
from adamhub._direct import DirectLane
from adamhub._errors import AdamhubError
from adamhub._session import BINARY, AsyncSession, Session
from adamhub._settings import SessionSettings

# Larger initial parameters go as raw bytes after creation, not as JSON numbers.
JSON_PARAMS_LIMIT = 65_536
PAGE_SIZE = 1000


class CreateOptions(SessionSettings, total=False):
    """What ``create_session`` takes besides ``params``: the ``size`` of a session made
    from scratch (zeros, or ``init``, e.g. ``{"kind": "normal", "std": 0.02, "seed":
    0}``), its ``dtype``, ``optimizer`` (an ``AdamConfig`` or a dict of its fields,
    ``schedule`` and ``max_grad_norm`` included), ``param_groups``
    (``[{"size": n, "lr": …}, …]``, as torch's), ``segments`` (the sizes of the tensors,
    for partial steps), and every setting (``SessionSettings``)."""

    size: int
    init: dict[str, Any]
    dtype: str
    optimizer: AdamConfig | dict[str, Any]
    param_groups: list[dict[str, Any]]
    segments: list[int]


Tags = str | Sequence[str] | None


def _create_body(
    params: npt.ArrayLike | None, options: CreateOptions
) -> tuple[dict[str, Any], bytes | None]:
    """The create request's body, and the raw parameters to PUT after it (large ones)."""
    size = options.get("size")
    if (params is None) == (size is None):
        raise ValueError("give exactly one of params and size")
    dtype = options.get("dtype", "float32")
    body: dict[str, Any] = {
        name: value
        for name, value in options.items()
        if value is not None and name not in ("size", "optimizer")
    }
    body["dtype"] = dtype
    optimizer = options.get("optimizer")
    if isinstance(optimizer, AdamConfig):
        body["optimizer"] = optimizer.to_dict()
    elif optimizer is not None:
        body["optimizer"] = {k: list(v) if k == "betas" else v for k, v in optimizer.items()}
    if params is None:
        body["size"] = size
        return body, None
    vector = np.asarray(params, dtype=dtype).reshape(-1)
    if vector.size <= JSON_PARAMS_LIMIT:
        body["params"] = vector.tolist()
        return body, None
    body["size"] = int(vector.size)
    return body, vector.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def _create_call(params: npt.ArrayLike | None, options: CreateOptions) -> Call[dict[str, Any]]:
    body, raw = _create_body(params, options)
    # One Idempotency-Key for every attempt: a create whose answer was lost is retried
    # and answered with the session it made, never a second one.
    key = {headers.IDEMPOTENCY_KEY: f"sdk-{uuid.uuid4().hex}"}
    resource: dict[str, Any] = (
        yield RequestSpec("POST", "/v1/sessions", json=body, headers=key)
    ).json()
    if raw is None:
        return resource
    path = f"/v1/sessions/{resource['id']}"
    try:
        put = RequestSpec("PUT", f"{path}/params", content=raw, headers={"Content-Type": BINARY})
        filled: dict[str, Any] = (yield put).json()
    except AdamhubError:
        yield RequestSpec("DELETE", path)
        raise
    return filled


def _import_call(
    checkpoint: bytes, name: str | None, tags: list[str] | None
) -> Call[dict[str, Any]]:
    """The import of a checkpoint file's bytes."""
    query: dict[str, Any] = {} if name is None else {"name": name}
    if tags:
        query["tag"] = list(tags)
    # One key for every attempt, as for a create: a retried import makes one session.
    sent = {"Content-Type": BINARY, headers.IDEMPOTENCY_KEY: f"sdk-{uuid.uuid4().hex}"}
    spec = RequestSpec(
        "POST", "/v1/sessions/import", content=checkpoint, headers=sent, params=query
    )
    resource: dict[str, Any] = (yield spec).json()
    return resource


def _session_call(session_id: str) -> Call[dict[str, Any]]:
    resource: dict[str, Any] = (yield RequestSpec("GET", f"/v1/sessions/{session_id}")).json()
    return resource


def _page_call(cursor: str | None, name: str | None, order: str, tag: Tags) -> Call[dict[str, Any]]:
    """A page of the session list."""
    query: dict[str, Any] = {"limit": str(PAGE_SIZE), "order": order}
    if cursor:
        query["cursor"] = cursor
    if name is not None:
        query["name"] = name
    if tag:
        query["tag"] = [tag] if isinstance(tag, str) else list(tag)
    page: dict[str, Any] = (yield RequestSpec("GET", "/v1/sessions", params=query)).json()
    return page


class Client(BaseClient[httpx.Client]):
    """A synchronous client of an adamhub service.

    ``base_url`` defaults to ``$ADAMHUB_BASE_URL`` or http://localhost:8000, ``api_key``
    to ``$ADAMHUB_API_KEY``, ``timeout`` to 60 s (5 s to connect). Failed calls are
    retried ``max_retries`` times (default 3: connection errors, timeouts, 408, 409
    conflicts, 429, 502, 503, 504) with exponential backoff from
    ``initial_retry_delay`` (0.5 s) up to ``max_retry_delay`` (8 s) and full jitter,
    honouring ``Retry-After``. ``gradient_dtype`` (``"bfloat16"``, ``"float16"``, or
    ``"int8"``: 8-bit blocks with error feedback, a quarter of float32's bytes) sets how
    the sessions it returns send gradients, ``answer_dtype`` (``"bfloat16"``,
    ``"float16"``) how their parameters come back; the session keeps its dtype.
    ``http_client`` injects a configured ``httpx.Client``. Use as a context manager, or
    call ``close()``.

    Steps and parameter reads to a plain ``http://`` service go over a lean
    keep-alive socket per thread (``_direct.py``) unless ``http_client`` is
    given or the environment names a proxy; every other call, and every retry, goes
    through httpx.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        http_client: httpx.Client | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(base_url, http_client=http_client, **options)
        self._direct = DirectLane.serving(self.base_url, self.timeout, own_http=self._own_http)

    def _new_http(self) -> httpx.Client:
        return httpx.Client(timeout=self.timeout)

    @property
    def keys(self) -> Keys:
        """The API keys (``client.keys.create(…)``, ``list``, ``get``, ``revoke``)."""
        return Keys(self)

    def request(self, spec: RequestSpec) -> httpx.Response:
        """Send one API call with this client's retries; raise on an error answer.

        The low-level interface that sessions and the methods here are built on.
        """
        attempt = 0
        if spec.direct and self._direct is not None:
            first = self._direct_attempt(self._direct, spec)
            if isinstance(first, httpx.Response):
                return first
            if first is not None:
                time.sleep(first)
                attempt = 1
        while True:
            request = self._build_request(self._http, spec)
            result: httpx.Response | httpx.TransportError
            try:
                result = self._http.send(request)
            except httpx.TransportError as exc:
                result = exc
            outcome = self._outcome(spec, attempt, request, result)
            if isinstance(outcome, httpx.Response):
                return outcome
            time.sleep(outcome)
            attempt += 1

    def _direct_attempt(self, lane: DirectLane, spec: RequestSpec) -> httpx.Response | float | None:
        """The first attempt of a hot call, over the lane: its answer, the delay before
        the next attempt (raises when there is none), or None to send it through httpx."""
        try:
            answer = lane.send(spec, {**self._default_headers(), **spec.headers})
        except httpx.TransportError as exc:
            return self._outcome(spec, 0, exc.request, exc)
        if answer is None or answer.is_success:
            return answer
        return self._outcome(spec, 0, answer.request, answer)

    def create_session(
        self, params: npt.ArrayLike | None = None, **options: Unpack[CreateOptions]
    ) -> Session:
        """Create a session from initial ``params``, or of ``size`` (zeros, or ``init``),
        with the optimizer, param groups and settings of ``options`` (``CreateOptions``;
        e.g. ``name=``, ``tags=``, ``rounds={"contributions": K}``). Large ``params`` go
        as raw bytes after the session is made."""
        resource = run_sync(self.request, _create_call(params, options))
        return Session(self, resource, gradient_dtype=self.gradient_dtype)

    def import_session(
        self,
        checkpoint: bytes | str | os.PathLike[str],
        *,
        name: str | None = None,
        tags: list[str] | None = None,
    ) -> Session:
        """A new session from a checkpoint (the bytes of ``Session.checkpoint()``, or the
        path of a file ``Session.save`` wrote) that continues exactly as the original;
        with a ``name`` and ``tags``."""
        data = checkpoint if isinstance(checkpoint, bytes) else Path(checkpoint).read_bytes()
        resource = run_sync(self.request, _import_call(data, name, tags))
        return Session(self, resource, gradient_dtype=self.gradient_dtype)

    def session(self, session_id: str) -> Session:
        """An existing session, read fresh from the service."""
        resource = run_sync(self.request, _session_call(session_id))
        return Session(self, resource, gradient_dtype=self.gradient_dtype)

    def iter_sessions(
        self, *, name: str | None = None, order: str = "created_at", tag: Tags = None
    ) -> Iterator[Session]:
        """Every session (whose name contains ``name``, or matches it as a glob; having
        every tag of ``tag``), oldest first or in ``order`` (``-updated_at``: the last
        stepped first), a page at a time."""
        cursor: str | None = None
        while True:
            page = run_sync(self.request, _page_call(cursor, name, order, tag))
            yield from (
                Session(self, r, gradient_dtype=self.gradient_dtype) for r in page["sessions"]
            )
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def list_sessions(
        self, *, name: str | None = None, order: str = "created_at", tag: Tags = None
    ) -> list[Session]:
        """Every session, oldest first (see ``iter_sessions``)."""
        return list(self.iter_sessions(name=name, order=order, tag=tag))

    def close(self) -> None:
        """Close the connections (unless the httpx client was given)."""
        if self._direct is not None:
            self._direct.close()
        if self._own_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(BaseClient[httpx.AsyncClient]):
    """An asyncio client of an adamhub service: ``Client``'s methods, as coroutines."""

    def _new_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.timeout)

    @property
    def keys(self) -> AsyncKeys:
        """The API keys (see ``Client.keys``), as coroutines."""
        return AsyncKeys(self)

    async def request(self, spec: RequestSpec) -> httpx.Response:
        """Send one API call with this client's retries (see ``Client.request``)."""
        attempt = 0
        while True:
            request = self._build_request(self._http, spec)
            result: httpx.Response | httpx.TransportError
            try:
                result = await self._http.send(request)
            except httpx.TransportError as exc:
                result = exc
            outcome = self._outcome(spec, attempt, request, result)
            if isinstance(outcome, httpx.Response):
                return outcome
            await asyncio.sleep(outcome)
            attempt += 1

    async def create_session(
        self, params: npt.ArrayLike | None = None, **options: Unpack[CreateOptions]
    ) -> AsyncSession:
        """Create a session (see ``Client.create_session``)."""
        resource = await run_async(self.request, _create_call(params, options))
        return AsyncSession(self, resource, gradient_dtype=self.gradient_dtype)

    async def import_session(
        self,
        checkpoint: bytes | str | os.PathLike[str],
        *,
        name: str | None = None,
        tags: list[str] | None = None,
    ) -> AsyncSession:
        """A new session from a checkpoint (see ``Client.import_session``)."""
        if isinstance(checkpoint, bytes):
            data = checkpoint
        else:
            data = await asyncio.to_thread(Path(checkpoint).read_bytes)
        resource = await run_async(self.request, _import_call(data, name, tags))
        return AsyncSession(self, resource, gradient_dtype=self.gradient_dtype)

    async def session(self, session_id: str) -> AsyncSession:
        """An existing session, read fresh from the service."""
        resource = await run_async(self.request, _session_call(session_id))
        return AsyncSession(self, resource, gradient_dtype=self.gradient_dtype)

    async def iter_sessions(
        self, *, name: str | None = None, order: str = "created_at", tag: Tags = None
    ) -> AsyncIterator[AsyncSession]:
        """Every session (see ``Client.iter_sessions``), a page at a time."""
        cursor: str | None = None
        while True:
            page = await run_async(self.request, _page_call(cursor, name, order, tag))
            for resource in page["sessions"]:
                yield AsyncSession(self, resource, gradient_dtype=self.gradient_dtype)
            if (cursor := page["next_cursor"]) is None:
                return

    async def list_sessions(
        self, *, name: str | None = None, order: str = "created_at", tag: Tags = None
    ) -> list[AsyncSession]:
        """Every session, oldest first (see ``Client.iter_sessions``)."""
        found = self.iter_sessions(name=name, order=order, tag=tag)
        return [session async for session in found]

    async def close(self) -> None:
        """Close the connections (unless the httpx client was given)."""
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
