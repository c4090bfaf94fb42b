"""A training session as the SDK shows it: ``Session`` (sync) and ``AsyncSession``."""

from __future__ import annotations

import asyncio
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import numpy.typing as npt

from adamhub._base_client import RequestSpec
from adamhub._config import AdamConfig
from adamhub._errors import StaleGradientError


class Requester(Protocol):
    """What a ``Session`` sends its calls through (a ``Client``)."""

    round_wait_seconds: float
    worker: str | None

    def request(self, spec: RequestSpec) -> httpx.Response:
        """Send one API call with retries."""
        ...


class AsyncRequester(Protocol):
    """What an ``AsyncSession`` sends its calls through (an ``AsyncClient``)."""

    round_wait_seconds: float
    worker: str | None

    async def request(self, spec: RequestSpec) -> httpx.Response:
        """Send one API call with retries."""
        ...


BINARY = "application/octet-stream"
WIRE_DTYPES = ("float16", "float32", "float64")
FLOAT16_MAX = 65504.0
SETTINGS_HEADER = "Adamhub-Optimizer"
BASE_STEP_HEADER = "Adamhub-Base-Step"
SAMPLES_HEADER = "Adamhub-Samples"
LOSS_HEADER = "Adamhub-Loss"
WORKER_HEADER = "Adamhub-Worker"


class SessionBase:
    """The fields of a session and the requests its methods make."""

    def __init__(self, resource: dict[str, Any], *, gradient_dtype: str | None = None) -> None:
        if gradient_dtype is not None and gradient_dtype not in WIRE_DTYPES:
            raise ValueError(f"gradient_dtype must be one of {WIRE_DTYPES}, not {gradient_dtype!r}")
        self.gradient_dtype = gradient_dtype
        self.last_applied_t: int | None = None
        self._apply(resource)

    def _apply(self, resource: dict[str, Any]) -> None:
        # The session as the service last described it, whole.
        self.resource: dict[str, Any] = resource
        self.id: str = resource["id"]
        self.t: int = resource["t"]
        self.size: int = resource["size"]
        self.dtype: str = resource["dtype"]
        self.name: str | None = resource.get("name")
        self.metadata: dict[str, Any] = resource.get("metadata") or {}
        self.history_steps: int = resource.get("history_steps", 0)
        self.param_groups: list[dict[str, Any]] | None = resource.get("param_groups")
        self.max_staleness: int | None = resource.get("max_staleness")
        self.rounds: dict[str, Any] | None = resource.get("rounds")
        self.history_points: int = resource.get("history_points", 10_000)
        self.expires_after_idle_seconds: int | None = resource.get("expires_after_idle_seconds")
        self.optimizer = AdamConfig.from_dict(resource["optimizer"])
        self.created_at: str | None = resource.get("created_at")
        self.updated_at: str | None = resource.get("updated_at")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} size={self.size} dtype={self.dtype} t={self.t}>"

    @property
    def _path(self) -> str:
        return f"/v1/sessions/{self.id}"

    def _step_spec(
        self,
        gradient: npt.ArrayLike,
        idempotency_key: str | None,
        settings: dict[str, Any] | None = None,
        samples: int | None = None,
        wait_seconds: float = 0.0,
        loss: float | None = None,
        worker: str | None = None,
    ) -> RequestSpec:
        wire = self.gradient_dtype or self.dtype
        vector = flat_vector(gradient, self.size, "the gradient")
        if wire == "float16" and vector.size and np.abs(vector).max() > FLOAT16_MAX:
            # It would not survive the narrowing: the exact values go instead.
            wire = self.dtype
        headers = {
            "Content-Type": BINARY,
            "Accept": BINARY,
            "Adamhub-Dtype": wire,
            # Made once, before any retry: a step whose answer was lost is applied once.
            "Idempotency-Key": idempotency_key or f"sdk-{uuid.uuid4().hex}",
            # The parameters this gradient was computed at, for a staleness bound.
            BASE_STEP_HEADER: str(self.t),
        }
        if settings:
            headers[SETTINGS_HEADER] = json.dumps(settings)
        if samples is not None:
            if samples < 1:
                raise ValueError(f"samples must be at least 1, not {samples}")
            headers[SAMPLES_HEADER] = str(int(samples))
        if loss is not None and math.isfinite(loss):  # a diverged batch is not recorded
            headers[LOSS_HEADER] = repr(float(loss))
        if worker is not None:
            headers[WORKER_HEADER] = worker
        if self.rounds is not None:
            # Answer before the client's read timeout; a 202 is followed by long-polls.
            headers["Prefer"] = f"wait={wait_seconds:g}"
        return RequestSpec(
            "POST",
            f"{self._path}/step",
            content=vector.astype(np.dtype(wire).newbyteorder("<"), copy=False).tobytes(),
            headers=headers,
        )

    def _step_result(self, response: httpx.Response) -> npt.NDArray[np.floating]:
        self.t = int(response.headers["adamhub-step"])
        self.last_applied_t = int(response.headers["adamhub-applied-step"])
        return self._vector(response)

    def _pending_round(self, response: httpx.Response) -> int | None:
        """The step a 202's open round will produce; None for a 200."""
        if response.status_code != 202:
            return None
        pending = response.json()
        self.t = int(pending["t"])
        return int(pending["round"])

    def _params_spec(self, min_step: int | None = None, wait_seconds: float = 0.0) -> RequestSpec:
        query = {} if min_step is None else {"min_step": str(min_step), "wait": f"{wait_seconds:g}"}
        return RequestSpec("GET", f"{self._path}/params", headers={"Accept": BINARY}, params=query)

    def _params_result(self, response: httpx.Response) -> npt.NDArray[np.floating]:
        self.t = int(response.headers["adamhub-step"])
        return self._vector(response)

    def _put_params_spec(self, params: npt.ArrayLike) -> RequestSpec:
        vector = flat_vector(params, self.size, "params")
        return RequestSpec(
            "PUT",
            f"{self._path}/params",
            content=vector.astype(np.dtype(self.dtype).newbyteorder("<")).tobytes(),
            headers={"Content-Type": BINARY},
        )

    def _update_spec(self, optimizer: dict[str, Any], extra: dict[str, Any]) -> RequestSpec:
        body = dict(extra)
        if optimizer:
            if "betas" in optimizer:
                optimizer["betas"] = list(optimizer["betas"])
            body["optimizer"] = optimizer
        return RequestSpec("PATCH", self._path, json=body)

    def _checkpoint_spec(self) -> RequestSpec:
        return RequestSpec("GET", f"{self._path}/checkpoint")

    def _fork_spec(self, name: str | None) -> RequestSpec:
        # Repeated only when surely not sent: a second fork would be a second session.
        body = {} if name is None else {"name": name}
        return RequestSpec("POST", f"{self._path}/fork", json=body, retry="unsent")

    def _rollback_spec(self, t: int) -> RequestSpec:
        # Safe to repeat: a second rollback to the same step finds the session there.
        return RequestSpec("POST", f"{self._path}/rollback", json={"t": t})

    def _history_spec(self, after_t: int | None, limit: int) -> RequestSpec:
        query = {"limit": str(limit)} | ({} if after_t is None else {"after_t": str(after_t)})
        return RequestSpec("GET", f"{self._path}/history", params=query)

    def _vector(self, response: httpx.Response) -> npt.NDArray[np.floating]:
        wire = np.dtype(self.dtype).newbyteorder("<")
        vector: npt.NDArray[np.floating] = np.frombuffer(response.content, dtype=wire).astype(
            self.dtype
        )
        return vector


class Session(SessionBase):
    """A session of a ``Client``: its fields are as of the last call that returned them."""

    def __init__(
        self, client: Requester, resource: dict[str, Any], *, gradient_dtype: str | None = None
    ) -> None:
        super().__init__(resource, gradient_dtype=gradient_dtype)
        self._client = client

    def step(
        self,
        gradient: npt.ArrayLike,
        *,
        idempotency_key: str | None = None,
        settings: dict[str, Any] | None = None,
        samples: int | None = None,
        loss: float | None = None,
    ) -> npt.NDArray[np.floating]:
        """Apply one gradient (any shape, ``size`` elements); return the new parameters.

        Sent as raw bytes in the session dtype (or ``gradient_dtype``; as the session
        dtype when a value is beyond float16), with an Idempotency-Key, so that retries
        after lost answers apply it exactly once. ``settings`` (``{"optimizer": {…},
        "param_groups": [{…}, …]}``, as ``update`` takes them) change the
        hyperparameters from this step on, in the same request.

        ``loss`` (the batch's loss) is recorded in the session's history, with the
        client's ``worker`` name.

        In a rounds session the gradient is a contribution, weighted by ``samples``
        (default 1): this returns when its round closes, with the round's parameters
        (every worker of the round gets the same). A gradient computed at parameters
        the round is not at raises ``StaleGradientError``, carrying the newest ones.
        """
        wait = self._client.round_wait_seconds
        spec = self._step_spec(
            gradient, idempotency_key, settings, samples, wait, loss, self._client.worker
        )
        try:
            response = self._client.request(spec)
        except StaleGradientError as exc:
            exc.params = self.params()  # the newest, for the next gradient
            raise
        round_step = self._pending_round(response)
        if round_step is None:
            return self._step_result(response)
        while True:  # the contribution is in: wait for its round
            params = self.params(min_step=round_step, wait_seconds=wait)
            if self.t >= round_step:
                self.last_applied_t = round_step
                return params

    def params(
        self, *, min_step: int | None = None, wait_seconds: float = 0.0
    ) -> npt.NDArray[np.floating]:
        """The current parameters (``t`` is updated too); with ``min_step``, as soon as
        t reaches it, or after ``wait_seconds`` as they are then (a long-poll)."""
        spec = self._params_spec(min_step, wait_seconds)
        return self._params_result(self._client.request(spec))

    def history(self, *, after_t: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """What the newest steps recorded, oldest first: per step ``t``, ``time`` (Unix
        seconds), ``lr``, ``grad_norm``, ``update_norm``, ``loss``, ``staleness`` and
        ``worker``; with ``after_t``, the steps after it."""
        points: list[dict[str, Any]] = self._client.request(
            self._history_spec(after_t, limit)
        ).json()["points"]
        return points

    def set_params(self, params: npt.ArrayLike) -> None:
        """Start over from ``params``: the moments and ``t`` go back to zero."""
        self._apply(self._client.request(self._put_params_spec(params)).json())

    def update(
        self,
        *,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        history_steps: int | None = None,
        param_groups: list[dict[str, Any]] | None = None,
        history_points: int | None = None,
        expires_after_idle_seconds: int | None = None,
        **optimizer: Any,
    ) -> None:
        """Change optimizer settings (``lr=…``, ``betas=…``, …), ``name``, ``metadata``,
        ``history_steps``, ``history_points``, ``expires_after_idle_seconds``, or the
        param groups' settings (one dict per group, in order)."""
        extra = _given(
            name=name,
            metadata=metadata,
            history_steps=history_steps,
            param_groups=param_groups,
            history_points=history_points,
            expires_after_idle_seconds=expires_after_idle_seconds,
        )
        self._apply(self._client.request(self._update_spec(optimizer, extra)).json())

    def rollback(self, t: int) -> None:
        """Return to the state right after step ``t`` (θ, m, v and ``t`` exactly as
        then); steps go on from there. ``HistoryUnavailableError`` (409) when the session
        no longer keeps that step (see ``history_steps``)."""
        self._apply(self._client.request(self._rollback_spec(t)).json())

    def refresh(self) -> None:
        """Read the session's fields again."""
        self._apply(self._client.request(RequestSpec("GET", self._path)).json())

    def checkpoint(self) -> bytes:
        """The session's state at its current step as a safetensors file (θ, m, v, the
        settings): ``client.import_session`` goes on from it bit for bit."""
        return self._client.request(self._checkpoint_spec()).content

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``checkpoint()`` to ``path``."""
        Path(path).write_bytes(self.checkpoint())

    def fork(self, *, name: str | None = None) -> Session:
        """A new session with this one's state and settings (and ``name``)."""
        resource = self._client.request(self._fork_spec(name)).json()
        return Session(self._client, resource, gradient_dtype=self.gradient_dtype)

    def delete(self) -> None:
        """Delete the session and all its state."""
        self._client.request(RequestSpec("DELETE", self._path))


class AsyncSession(SessionBase):
    """A session of an ``AsyncClient``: the methods of ``Session``, as coroutines."""

    def __init__(
        self, client: AsyncRequester, resource: dict[str, Any], *, gradient_dtype: str | None = None
    ) -> None:
        super().__init__(resource, gradient_dtype=gradient_dtype)
        self._client = client

    async def step(
        self,
        gradient: npt.ArrayLike,
        *,
        idempotency_key: str | None = None,
        settings: dict[str, Any] | None = None,
        samples: int | None = None,
        loss: float | None = None,
    ) -> npt.NDArray[np.floating]:
        """Apply one gradient, or contribute it to a round; return the new parameters
        (see ``Session.step``)."""
        wait = self._client.round_wait_seconds
        spec = self._step_spec(
            gradient, idempotency_key, settings, samples, wait, loss, self._client.worker
        )
        try:
            response = await self._client.request(spec)
        except StaleGradientError as exc:
            exc.params = await self.params()  # the newest, for the next gradient
            raise
        round_step = self._pending_round(response)
        if round_step is None:
            return self._step_result(response)
        while True:  # the contribution is in: wait for its round
            params = await self.params(min_step=round_step, wait_seconds=wait)
            if self.t >= round_step:
                self.last_applied_t = round_step
                return params

    async def params(
        self, *, min_step: int | None = None, wait_seconds: float = 0.0
    ) -> npt.NDArray[np.floating]:
        """The current parameters (see ``Session.params``)."""
        spec = self._params_spec(min_step, wait_seconds)
        return self._params_result(await self._client.request(spec))

    async def history(
        self, *, after_t: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """What the newest steps recorded (see ``Session.history``)."""
        response = await self._client.request(self._history_spec(after_t, limit))
        points: list[dict[str, Any]] = response.json()["points"]
        return points

    async def set_params(self, params: npt.ArrayLike) -> None:
        """Start over from ``params``: the moments and ``t`` go back to zero."""
        self._apply((await self._client.request(self._put_params_spec(params))).json())

    async def update(
        self,
        *,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        history_steps: int | None = None,
        param_groups: list[dict[str, Any]] | None = None,
        history_points: int | None = None,
        expires_after_idle_seconds: int | None = None,
        **optimizer: Any,
    ) -> None:
        """Change settings (see ``Session.update``)."""
        extra = _given(
            name=name,
            metadata=metadata,
            history_steps=history_steps,
            param_groups=param_groups,
            history_points=history_points,
            expires_after_idle_seconds=expires_after_idle_seconds,
        )
        self._apply((await self._client.request(self._update_spec(optimizer, extra))).json())

    async def rollback(self, t: int) -> None:
        """Return to the state right after step ``t`` (see ``Session.rollback``)."""
        self._apply((await self._client.request(self._rollback_spec(t))).json())

    async def refresh(self) -> None:
        """Read the session's fields again."""
        self._apply((await self._client.request(RequestSpec("GET", self._path))).json())

    async def checkpoint(self) -> bytes:
        """The session's state as a safetensors file (see ``Session.checkpoint``)."""
        return (await self._client.request(self._checkpoint_spec())).content

    async def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``checkpoint()`` to ``path``."""
        data = await self.checkpoint()
        await asyncio.to_thread(Path(path).write_bytes, data)

    async def fork(self, *, name: str | None = None) -> AsyncSession:
        """A new session with this one's state and settings (and ``name``)."""
        resource = (await self._client.request(self._fork_spec(name))).json()
        return AsyncSession(self._client, resource, gradient_dtype=self.gradient_dtype)

    async def delete(self) -> None:
        """Delete the session and all its state."""
        await self._client.request(RequestSpec("DELETE", self._path))


def _given(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def flat_vector(values: npt.ArrayLike, size: int, what: str) -> npt.NDArray[Any]:
    """``values`` as a flat array of ``size`` numbers, or ValueError."""
    array = np.asarray(values)
    if array.size != size:
        raise ValueError(f"{what} has {array.size} elements; the session has {size}")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{what} must hold numbers, not {array.dtype}")
    return array.reshape(-1)
