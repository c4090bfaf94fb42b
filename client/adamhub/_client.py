"""``Client`` and ``AsyncClient``: the entry points of the SDK."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, Unpack

import httpx
import numpy as np
import numpy.typing as npt

from adamhub._api_keys import AsyncKeys, Keys
from adamhub._base_client import BaseClient, ClientOptions, RequestSpec
from adamhub._config import AdamConfig
from adamhub._session import BINARY, AsyncSession, Session

# Larger initial parameters go as raw bytes after creation, not as JSON numbers.
JSON_PARAMS_LIMIT = 65_536
PAGE_SIZE = 1000


def _list_params(cursor: str | None, name: str | None, order: str) -> dict[str, str]:
    params = {"limit": str(PAGE_SIZE), "order": order}
    if cursor:
        params["cursor"] = cursor
    if name is not None:
        params["name"] = name
    return params


def _create_specs(
    params: npt.ArrayLike | None,
    size: int | None,
    init: dict[str, Any] | None,
    dtype: str,
    optimizer: AdamConfig | dict[str, Any] | None,
    name: str | None,
    metadata: dict[str, Any] | None,
    history_steps: int | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    max_staleness: int | None = None,
    rounds: dict[str, Any] | None = None,
    history_points: int | None = None,
    expires_after_idle_seconds: int | None = None,
) -> tuple[RequestSpec, bytes | None]:
    """The create request, and the raw parameters to PUT after it (for large ones)."""
    if (params is None) == (size is None):
        raise ValueError("give exactly one of params and size")
    body: dict[str, Any] = {"dtype": dtype}
    if isinstance(optimizer, AdamConfig):
        body["optimizer"] = optimizer.to_dict()
    elif optimizer is not None:
        body["optimizer"] = {k: list(v) if k == "betas" else v for k, v in optimizer.items()}
    if name is not None:
        body["name"] = name
    if metadata is not None:
        body["metadata"] = metadata
    if history_steps is not None:
        body["history_steps"] = history_steps
    if param_groups is not None:
        body["param_groups"] = param_groups
    if max_staleness is not None:
        body["max_staleness"] = max_staleness
    if rounds is not None:
        body["rounds"] = rounds
    if history_points is not None:
        body["history_points"] = history_points
    if expires_after_idle_seconds is not None:
        body["expires_after_idle_seconds"] = expires_after_idle_seconds
    raw = None
    if params is not None:
        vector = np.asarray(params, dtype=dtype).reshape(-1)
        if vector.size > JSON_PARAMS_LIMIT:
            body["size"] = int(vector.size)
            raw = vector.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        else:
            body["params"] = vector.tolist()
    else:
        body["size"] = size
        if init is not None:
            body["init"] = init
    # One Idempotency-Key for every attempt: a create whose answer was lost is retried
    # and answered with the session it made, never a second one.
    headers = {"Idempotency-Key": f"sdk-{uuid.uuid4().hex}"}
    return RequestSpec("POST", "/v1/sessions", json=body, headers=headers), raw


def _import_spec(data: bytes, name: str | None) -> RequestSpec:
    """The import request of a checkpoint file's bytes."""
    params = {} if name is None else {"name": name}
    # One key for every attempt, as for a create: a retried import makes one session.
    headers = {"Content-Type": BINARY, "Idempotency-Key": f"sdk-{uuid.uuid4().hex}"}
    return RequestSpec("POST", "/v1/sessions/import", content=data, headers=headers, params=params)


def _put_raw(session_id: str, raw: bytes) -> RequestSpec:
    return RequestSpec(
        "PUT", f"/v1/sessions/{session_id}/params", content=raw, headers={"Content-Type": BINARY}
    )


class Client(BaseClient):
    """A synchronous client of an adamhub service.

    ``base_url`` defaults to ``$ADAMHUB_BASE_URL`` or http://localhost:8000, ``api_key``
    to ``$ADAMHUB_API_KEY``, ``timeout`` to 60 s (5 s to connect). Failed calls are
    retried ``max_retries`` times (default 3: connection errors, timeouts, 408, 409
    conflicts, 429, 502, 503, 504) with exponential backoff from
    ``initial_retry_delay`` (0.5 s) up to ``max_retry_delay`` (8 s) and full jitter,
    honouring ``Retry-After``. ``gradient_dtype`` (e.g. ``"float16"``) sets how the
    sessions it returns send gradients. ``http_client`` injects a configured
    ``httpx.Client``. Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        http_client: httpx.Client | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(base_url, **options)
        self._own_http = http_client is None
        self._http = http_client or httpx.Client(timeout=self.timeout)
        self.keys = Keys(self)

    def request(self, spec: RequestSpec) -> httpx.Response:
        """Send one API call with this client's retries; raise on an error answer.

        The low-level interface that sessions and the methods here are built on.
        """
        attempt = 0
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

    def create_session(
        self,
        params: npt.ArrayLike | None = None,
        *,
        size: int | None = None,
        init: dict[str, Any] | None = None,
        dtype: str = "float32",
        optimizer: AdamConfig | dict[str, Any] | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        history_steps: int | None = None,
        param_groups: list[dict[str, Any]] | None = None,
        max_staleness: int | None = None,
        rounds: dict[str, Any] | None = None,
        history_points: int | None = None,
        expires_after_idle_seconds: int | None = None,
    ) -> Session:
        """Create a session from initial ``params``, or of ``size`` (zeros, or ``init``);
        it keeps what rolling back to any of its last ``history_steps`` steps needs.
        ``param_groups`` (``[{"size": n, "lr": …}, …]``) split it as torch's do; with
        ``max_staleness``, a gradient computed more than that many steps behind is refused
        (``StaleGradientError``). ``rounds`` (``{"contributions": K}`` or
        ``{"target_samples": B}``, with ``timeout_seconds`` and ``min_contributions``)
        makes each step the samples-weighted mean of a round's contributions, as DDP
        does. ``history_points`` (default 10,000) steps' points are kept for charts;
        ``expires_after_idle_seconds`` deletes the session once idle that long."""
        spec, raw = _create_specs(
            params,
            size,
            init,
            dtype,
            optimizer,
            name,
            metadata,
            history_steps,
            param_groups,
            max_staleness,
            rounds,
            history_points,
            expires_after_idle_seconds,
        )
        resource = self.request(spec).json()
        if raw is not None:
            try:
                resource = self.request(_put_raw(resource["id"], raw)).json()
            except BaseException:
                self.request(RequestSpec("DELETE", f"/v1/sessions/{resource['id']}"))
                raise
        return Session(self, resource, gradient_dtype=self.gradient_dtype)

    def import_session(
        self, checkpoint: bytes | str | os.PathLike[str], *, name: str | None = None
    ) -> Session:
        """A new session from a checkpoint (the bytes of ``Session.checkpoint()``, or the
        path of a file ``Session.save`` wrote) that continues exactly as the original."""
        data = checkpoint if isinstance(checkpoint, bytes) else Path(checkpoint).read_bytes()
        resource = self.request(_import_spec(data, name)).json()
        return Session(self, resource, gradient_dtype=self.gradient_dtype)

    def session(self, session_id: str) -> Session:
        """An existing session, read fresh from the service."""
        resource = self.request(RequestSpec("GET", f"/v1/sessions/{session_id}")).json()
        return Session(self, resource, gradient_dtype=self.gradient_dtype)

    def iter_sessions(
        self, *, name: str | None = None, order: str = "created_at"
    ) -> Iterator[Session]:
        """Every session (whose name contains ``name``, or matches it as a glob), oldest
        first or in ``order`` (``-updated_at``: the last stepped first), a page at a
        time."""
        cursor: str | None = None
        while True:
            params = _list_params(cursor, name, order)
            page = self.request(RequestSpec("GET", "/v1/sessions", params=params)).json()
            for resource in page["sessions"]:
                yield Session(self, resource, gradient_dtype=self.gradient_dtype)
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def list_sessions(self, *, name: str | None = None, order: str = "created_at") -> list[Session]:
        """Every session, oldest first (see ``iter_sessions``)."""
        return list(self.iter_sessions(name=name, order=order))

    def close(self) -> None:
        """Close the connections (unless the httpx client was given)."""
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


class AsyncClient(BaseClient):
    """An asyncio client of an adamhub service: ``Client``'s methods, as coroutines."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(base_url, **options)
        self._own_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=self.timeout)
        self.keys = AsyncKeys(self)

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
        self,
        params: npt.ArrayLike | None = None,
        *,
        size: int | None = None,
        init: dict[str, Any] | None = None,
        dtype: str = "float32",
        optimizer: AdamConfig | dict[str, Any] | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        history_steps: int | None = None,
        param_groups: list[dict[str, Any]] | None = None,
        max_staleness: int | None = None,
        rounds: dict[str, Any] | None = None,
        history_points: int | None = None,
        expires_after_idle_seconds: int | None = None,
    ) -> AsyncSession:
        """Create a session (see ``Client.create_session``)."""
        spec, raw = _create_specs(
            params,
            size,
            init,
            dtype,
            optimizer,
            name,
            metadata,
            history_steps,
            param_groups,
            max_staleness,
            rounds,
            history_points,
            expires_after_idle_seconds,
        )
        resource = (await self.request(spec)).json()
        if raw is not None:
            try:
                resource = (await self.request(_put_raw(resource["id"], raw))).json()
            except BaseException:
                await self.request(RequestSpec("DELETE", f"/v1/sessions/{resource['id']}"))
                raise
        return AsyncSession(self, resource, gradient_dtype=self.gradient_dtype)

    async def import_session(
        self, checkpoint: bytes | str | os.PathLike[str], *, name: str | None = None
    ) -> AsyncSession:
        """A new session from a checkpoint (see ``Client.import_session``)."""
        if isinstance(checkpoint, bytes):
            data = checkpoint
        else:
            data = await asyncio.to_thread(Path(checkpoint).read_bytes)
        resource = (await self.request(_import_spec(data, name))).json()
        return AsyncSession(self, resource, gradient_dtype=self.gradient_dtype)

    async def session(self, session_id: str) -> AsyncSession:
        """An existing session, read fresh from the service."""
        resource = (await self.request(RequestSpec("GET", f"/v1/sessions/{session_id}"))).json()
        return AsyncSession(self, resource, gradient_dtype=self.gradient_dtype)

    async def iter_sessions(
        self, *, name: str | None = None, order: str = "created_at"
    ) -> AsyncIterator[AsyncSession]:
        """Every session (see ``Client.iter_sessions``), a page at a time."""
        cursor: str | None = None
        while True:
            params = _list_params(cursor, name, order)
            page = (await self.request(RequestSpec("GET", "/v1/sessions", params=params))).json()
            for resource in page["sessions"]:
                yield AsyncSession(self, resource, gradient_dtype=self.gradient_dtype)
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def list_sessions(
        self, *, name: str | None = None, order: str = "created_at"
    ) -> list[AsyncSession]:
        """Every session, oldest first (see ``Client.iter_sessions``)."""
        return [session async for session in self.iter_sessions(name=name, order=order)]

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
