"""A training session as the SDK shows it: ``Session`` (sync) and ``AsyncSession``."""

from __future__ import annotations

import asyncio
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Generic, Protocol, TypedDict, TypeVar, Unpack

import httpx
import numpy as np
import numpy.typing as npt

from adamhub import _headers as headers
from adamhub._base_client import RequestSpec
from adamhub._calls import Call, one, run_async, run_sync
from adamhub._config import AdamConfig
from adamhub._errors import StaleGradientError
from adamhub._settings import SessionSettings, SessionUpdate, settings_of, update_body
from adamhub.quantization import INT8, WIRE_NAME, ErrorFeedback


class Requester(Protocol):
    """What a ``Session`` sends its calls through (a ``Client``)."""

    round_wait_seconds: float
    worker: str | None
    answer_dtype: str | None

    def request(self, spec: RequestSpec) -> httpx.Response:
        """Send one API call with retries."""
        ...


class AsyncRequester(Protocol):
    """What an ``AsyncSession`` sends its calls through (an ``AsyncClient``)."""

    round_wait_seconds: float
    worker: str | None
    answer_dtype: str | None

    async def request(self, spec: RequestSpec) -> httpx.Response:
        """Send one API call with retries."""
        ...


BINARY = "application/octet-stream"
WIRE_DTYPES = ("bfloat16", "float16", "float32", "float64")
# 8-bit gradients: `gradient_dtype="int8"` sends `int8-block4096` bodies, with error
# feedback (``quantization.py``).
GRADIENT_DTYPES = (*WIRE_DTYPES, INT8)
FLOAT16_MAX = 65504.0
Vector = npt.NDArray[np.floating]


class StepOptions(TypedDict, total=False):
    """What a step may carry besides its gradient (see ``Session.step``)."""

    idempotency_key: str | None
    settings: dict[str, Any] | None
    samples: int | None
    loss: float | None
    segments: list[int] | None


C = TypeVar("C", Requester, AsyncRequester)


class SessionBase(Generic[C]):
    """The fields of a session and the calls its methods make, through ``client``."""

    def __init__(
        self, client: C, resource: dict[str, Any], *, gradient_dtype: str | None = None
    ) -> None:
        if gradient_dtype is not None and gradient_dtype not in GRADIENT_DTYPES:
            raise ValueError(
                f"gradient_dtype must be one of {GRADIENT_DTYPES}, not {gradient_dtype!r}"
            )
        self._client: C = client
        self.gradient_dtype = gradient_dtype
        # With int8 gradients: what quantization has not sent yet, added to the next
        # gradient (error feedback); its next value, kept once the step is taken.
        self.error_feedback: ErrorFeedback | None = None
        self._pending_feedback: ErrorFeedback | None = None
        self._round_wait_seconds = client.round_wait_seconds
        self._worker = client.worker
        self._answer_dtype = client.answer_dtype
        self.last_applied_t: int | None = None
        self._apply(resource)

    def _apply(self, resource: dict[str, Any]) -> None:
        # The session as the service last described it, whole.
        self.resource: dict[str, Any] = resource
        self.id: str = resource["id"]
        self.t: int = resource["t"]
        self.size: int = resource["size"]
        self.dtype: str = resource["dtype"]
        # name, metadata, tags, …: also readable as attributes (``session.name``).
        self.settings: SessionSettings = settings_of(resource)
        self.param_groups: list[dict[str, Any]] | None = resource.get("param_groups")
        self.segments: list[int] | None = resource.get("segments")
        self.optimizer = AdamConfig.from_dict(resource["optimizer"])
        self.created_at: str | None = resource.get("created_at")
        self.updated_at: str | None = resource.get("updated_at")

    def __getattr__(self, name: str) -> Any:
        # The settings as attributes: session.name, session.tags, session.rounds, …
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
        segments: list[int] | None = None,
    ) -> RequestSpec:
        wire = self.gradient_dtype or self.dtype
        vector = flat_vector(gradient, self._carried_size(segments), "the gradient")
        if wire == "float16" and vector.size and np.abs(vector).max() > FLOAT16_MAX:
            # It would not survive the narrowing: the exact values go instead.
            wire = self.dtype
        body: bytes | memoryview
        if wire == INT8:
            if segments is not None:
                raise ValueError("8-bit gradients carry every parameter: leave out segments")
            feedback = self.error_feedback or ErrorFeedback(self.size)
            body, self._pending_feedback = feedback.encode(vector)
            wire = WIRE_NAME
        else:
            body = wire_bytes(vector, wire)
        sent = {
            "Content-Type": BINARY,
            "Accept": BINARY,
            **self._accept_dtype(),
            headers.DTYPE: wire,
            # Made once, before any retry: a step whose answer was lost is applied once.
            headers.IDEMPOTENCY_KEY: idempotency_key or f"sdk-{uuid.uuid4().hex}",
            # The parameters this gradient was computed at, for a staleness bound.
            headers.BASE_STEP: str(self.t),
        }
        if settings:
            sent[headers.SETTINGS] = json.dumps(settings)
        if samples is not None:
            if samples < 1:
                raise ValueError(f"samples must be at least 1, not {samples}")
            sent[headers.SAMPLES] = str(int(samples))
        if loss is not None and math.isfinite(loss):  # a diverged batch is not recorded
            sent[headers.LOSS] = repr(float(loss))
        if worker is not None:
            sent[headers.WORKER] = worker
        if segments is not None:
            sent[headers.SEGMENTS] = ",".join(str(int(index)) for index in segments)
        if self.settings["rounds"] is not None:
            # Answer before the client's read timeout; a 202 is followed by long-polls.
            sent[headers.PREFER] = f"wait={wait_seconds:g}"
        return RequestSpec("POST", f"{self._path}/step", content=body, headers=sent, direct=True)

    def _carried_size(self, segments: list[int] | None) -> int:
        """The numbers a step carrying ``segments`` (None: all) holds."""
        if segments is None:
            return self.size
        if not self.segments:
            raise ValueError("this session has no segments: a step carries every parameter")
        return sum(self.segments[index] for index in segments)

    def _step_result(self, response: httpx.Response) -> npt.NDArray[np.floating]:
        self.t = int(response.headers[headers.STEP])
        self.last_applied_t = int(response.headers[headers.APPLIED_STEP])
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
        sent = {"Accept": BINARY, **self._accept_dtype()}
        return RequestSpec("GET", f"{self._path}/params", headers=sent, params=query, direct=True)

    def _accept_dtype(self) -> dict[str, str]:
        """The header asking for answers in a narrower dtype, when the client does."""
        return {} if self._answer_dtype is None else {headers.ACCEPT_DTYPE: self._answer_dtype}

    def _params_result(self, response: httpx.Response) -> npt.NDArray[np.floating]:
        self.t = int(response.headers[headers.STEP])
        return self._vector(response)

    def _put_params_spec(self, params: npt.ArrayLike) -> RequestSpec:
        vector = flat_vector(params, self.size, "params")
        return RequestSpec(
            "PUT",
            f"{self._path}/params",
            content=vector.astype(np.dtype(self.dtype).newbyteorder("<")).tobytes(),
            headers={"Content-Type": BINARY},
        )

    def _checkpoint_spec(self) -> RequestSpec:
        return RequestSpec("GET", f"{self._path}/checkpoint")

    def _fork_spec(self, name: str | None, tags: list[str] | None) -> RequestSpec:
        # Repeated only when surely not sent: a second fork would be a second session.
        body = {key: value for key, value in (("name", name), ("tags", tags)) if value is not None}
        return RequestSpec("POST", f"{self._path}/fork", json=body, retry="unsent")

    def _rollback_spec(self, t: int) -> RequestSpec:
        # Safe to repeat: a second rollback to the same step finds the session there.
        return RequestSpec("POST", f"{self._path}/rollback", json={"t": t})

    def _history_spec(self, after_t: int | None, limit: int) -> RequestSpec:
        query = {"limit": str(limit)} | ({} if after_t is None else {"after_t": str(after_t)})
        return RequestSpec("GET", f"{self._path}/history", params=query)

    # The calls, written once for both faces (see ``_calls``).

    def _step_call(self, gradient: npt.ArrayLike, options: StepOptions) -> Call[Vector]:
        wait = self._round_wait_seconds
        spec = self._step_spec(
            gradient,
            options.get("idempotency_key"),
            options.get("settings"),
            options.get("samples"),
            wait,
            options.get("loss"),
            self._worker,
            options.get("segments"),
        )
        try:
            response = yield spec
        except StaleGradientError as exc:
            exc.params = yield from self._params_call()  # the newest, for the next gradient
            raise
        if self._pending_feedback is not None:
            # The step is taken (or its contribution is in): what it did not send waits
            # for the next one.
            self.error_feedback, self._pending_feedback = self._pending_feedback, None
        round_step = self._pending_round(response)
        if round_step is None:
            return self._step_result(response)
        while True:  # the contribution is in: wait for its round
            params = yield from self._params_call(round_step, wait)
            if self.t >= round_step:
                self.last_applied_t = round_step
                return params

    def _params_call(self, min_step: int | None = None, wait_seconds: float = 0.0) -> Call[Vector]:
        response = yield self._params_spec(min_step, wait_seconds)
        return self._params_result(response)

    def _history_call(self, after_t: int | None, limit: int) -> Call[list[dict[str, Any]]]:
        response = yield self._history_spec(after_t, limit)
        points: list[dict[str, Any]] = response.json()["points"]
        return points

    def _resource_call(self, spec: RequestSpec) -> Call[None]:
        """A call that answers this session's resource, taken in."""
        response = yield spec
        self._apply(response.json())

    def _put_params_call(self, params: npt.ArrayLike) -> Call[None]:
        return self._resource_call(self._put_params_spec(params))

    def _update_call(self, changes: SessionUpdate) -> Call[None]:
        return self._resource_call(RequestSpec("PATCH", self._path, json=update_body(changes)))

    def _rollback_call(self, t: int) -> Call[None]:
        return self._resource_call(self._rollback_spec(t))

    def _refresh_call(self) -> Call[None]:
        return self._resource_call(RequestSpec("GET", self._path))

    def _checkpoint_call(self) -> Call[bytes]:
        response = yield self._checkpoint_spec()
        return response.content

    def _fork_call(self, name: str | None, tags: list[str] | None) -> Call[dict[str, Any]]:
        response = yield self._fork_spec(name, tags)
        resource: dict[str, Any] = response.json()
        return resource

    def _add_group_call(
        self, params: npt.ArrayLike, segments: list[int] | None, fields: dict[str, Any]
    ) -> Call[None]:
        vector = np.asarray(params, dtype=self.dtype).reshape(-1)
        body: dict[str, Any] = {"params": vector.tolist(), **fields}
        if "betas" in body:
            body["betas"] = list(body["betas"])
        if segments is not None:
            body["segments"] = list(segments)
        # Sent again only when surely not applied: a second one would add a second group.
        spec = RequestSpec("POST", f"{self._path}/param_groups", json=body, retry="unsent")
        return self._resource_call(spec)

    def _screening_call(self) -> Call[dict[str, Any]]:
        response = yield self._history_spec(None, 1000)
        document = response.json()
        return {key: document.get(key) for key in ("refusals", "quarantined")}

    def _release_call(self, worker: str) -> Call[httpx.Response]:
        return one(RequestSpec("DELETE", f"{self._path}/quarantine/{worker}"))

    def _delete_call(self) -> Call[httpx.Response]:
        return one(RequestSpec("DELETE", self._path))

    def _vector(self, response: httpx.Response) -> npt.NDArray[np.floating]:
        """A binary answer in the session's dtype (widened from the one it came in)."""
        wire = response.headers.get(headers.DTYPE, self.dtype)
        if wire == "bfloat16":
            bits = np.frombuffer(response.content, dtype="<u2").astype(np.uint32) << 16
            widened: npt.NDArray[np.floating] = bits.view(np.float32).astype(self.dtype)
            return widened
        vector: npt.NDArray[np.floating] = np.frombuffer(
            response.content, dtype=np.dtype(wire).newbyteorder("<")
        )
        # A body read into a writable buffer (the direct lane's) is the vector itself.
        return vector.astype(self.dtype, copy=not vector.flags.writeable)


class Session(SessionBase[Requester]):
    """A session of a ``Client``: its fields are as of the last call that returned them."""

    def step(self, gradient: npt.ArrayLike, **options: Unpack[StepOptions]) -> Vector:
        """Apply one gradient (any shape, ``size`` elements); return the new parameters.

        Sent as raw bytes in the session dtype (or ``gradient_dtype``; as the session
        dtype when a value is beyond float16), with an Idempotency-Key (``idempotency_key``,
        else a fresh one), so that retries after lost answers apply it exactly once.
        ``settings`` (``{"optimizer": {…}, "param_groups": [{…}, …]}``, as ``update``
        takes them) change the hyperparameters from this step on, in the same request.

        ``loss`` (the batch's loss) is recorded in the session's history, with the
        client's ``worker`` name.

        ``segments`` (in a session made with ``segments``): a partial step carrying the
        gradients of those segments (tensors) only, one after another; the others keep
        their values, moments and step counts, as torch skips a parameter without a
        gradient.

        In a rounds session the gradient is a contribution, weighted by ``samples``
        (default 1): this returns when its round closes, with the round's parameters
        (every worker of the round gets the same). A gradient computed at parameters
        the round is not at raises ``StaleGradientError``, carrying the newest ones.
        """
        return run_sync(self._client.request, self._step_call(gradient, options))

    def params(self, *, min_step: int | None = None, wait_seconds: float = 0.0) -> Vector:
        """The current parameters (``t`` is updated too); with ``min_step``, as soon as
        t reaches it, or after ``wait_seconds`` as they are then (a long-poll)."""
        return run_sync(self._client.request, self._params_call(min_step, wait_seconds))

    def history(self, *, after_t: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """What the newest steps recorded, oldest first: per step ``t``, ``time`` (Unix
        seconds), ``lr``, ``grad_norm``, ``update_norm``, ``loss``, ``staleness`` and
        ``worker``; with ``after_t``, the steps after it."""
        return run_sync(self._client.request, self._history_call(after_t, limit))

    def screening(self) -> dict[str, Any]:
        """What screening refused: ``refusals`` (oldest first: ``time``, ``worker``,
        ``reason``, ``norm``, ``bound``, ``quarantined_until``) and ``quarantined`` (the
        workers in quarantine now, and when it ends)."""
        return run_sync(self._client.request, self._screening_call())

    def release_worker(self, worker: str) -> None:
        """End a worker's quarantine on this session."""
        run_sync(self._client.request, self._release_call(worker))

    def set_params(self, params: npt.ArrayLike) -> None:
        """Start over from ``params``: the moments and ``t`` go back to zero."""
        run_sync(self._client.request, self._put_params_call(params))

    def update(self, **changes: Unpack[SessionUpdate]) -> None:
        """Change optimizer settings (``lr=…``, ``betas=…``, ``schedule=…``, …), the
        session's settings (``name``, ``metadata``, ``tags``, ``history_steps``,
        ``max_staleness``, ``history_points``, ``expires_after_idle_seconds``; None puts
        one that may be null back to its default), or the param groups' settings
        (``param_groups``: one dict per group, in order)."""
        run_sync(self._client.request, self._update_call(changes))

    def add_param_group(
        self, params: npt.ArrayLike, *, segments: list[int] | None = None, **fields: Any
    ) -> None:
        """Append ``params`` as a new param group (as torch's ``add_param_group``), with
        the hyperparameters ``fields`` sets (``lr=…``, ``betas=…``, …) and its tensors'
        ``segments``; their moments start at zero. The session's ``size`` grows."""
        run_sync(self._client.request, self._add_group_call(params, segments, fields))

    def rollback(self, t: int) -> None:
        """Return to the state right after step ``t`` (θ, m, v and ``t`` exactly as
        then); steps go on from there. ``HistoryUnavailableError`` (409) when the session
        no longer keeps that step (see ``history_steps``)."""
        run_sync(self._client.request, self._rollback_call(t))

    def refresh(self) -> None:
        """Read the session's fields again."""
        run_sync(self._client.request, self._refresh_call())

    def checkpoint(self) -> bytes:
        """The session's state at its current step as a safetensors file (θ, m, v, the
        settings): ``client.import_session`` goes on from it bit for bit."""
        return run_sync(self._client.request, self._checkpoint_call())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``checkpoint()`` to ``path``."""
        Path(path).write_bytes(self.checkpoint())

    def fork(self, *, name: str | None = None, tags: list[str] | None = None) -> Session:
        """A new session with this one's state and settings (``name`` and ``tags``
        default to this one's)."""
        resource = run_sync(self._client.request, self._fork_call(name, tags))
        return Session(self._client, resource, gradient_dtype=self.gradient_dtype)

    def delete(self) -> None:
        """Delete the session and all its state."""
        run_sync(self._client.request, self._delete_call())


class AsyncSession(SessionBase[AsyncRequester]):
    """A session of an ``AsyncClient``: the methods of ``Session``, as coroutines."""

    async def step(self, gradient: npt.ArrayLike, **options: Unpack[StepOptions]) -> Vector:
        """Apply one gradient, or contribute it to a round (see ``Session.step``)."""
        return await run_async(self._client.request, self._step_call(gradient, options))

    async def params(self, *, min_step: int | None = None, wait_seconds: float = 0.0) -> Vector:
        """The current parameters (see ``Session.params``)."""
        return await run_async(self._client.request, self._params_call(min_step, wait_seconds))

    async def history(
        self, *, after_t: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """What the newest steps recorded (see ``Session.history``)."""
        return await run_async(self._client.request, self._history_call(after_t, limit))

    async def screening(self) -> dict[str, Any]:
        """What screening refused (see ``Session.screening``)."""
        return await run_async(self._client.request, self._screening_call())

    async def release_worker(self, worker: str) -> None:
        """End a worker's quarantine on this session."""
        await run_async(self._client.request, self._release_call(worker))

    async def set_params(self, params: npt.ArrayLike) -> None:
        """Start over from ``params`` (see ``Session.set_params``)."""
        await run_async(self._client.request, self._put_params_call(params))

    async def update(self, **changes: Unpack[SessionUpdate]) -> None:
        """Change settings (see ``Session.update``)."""
        await run_async(self._client.request, self._update_call(changes))

    async def add_param_group(
        self, params: npt.ArrayLike, *, segments: list[int] | None = None, **fields: Any
    ) -> None:
        """Append a param group (see ``Session.add_param_group``)."""
        await run_async(self._client.request, self._add_group_call(params, segments, fields))

    async def rollback(self, t: int) -> None:
        """Return to the state right after step ``t`` (see ``Session.rollback``)."""
        await run_async(self._client.request, self._rollback_call(t))

    async def refresh(self) -> None:
        """Read the session's fields again."""
        await run_async(self._client.request, self._refresh_call())

    async def checkpoint(self) -> bytes:
        """The session's state as a safetensors file (see ``Session.checkpoint``)."""
        return await run_async(self._client.request, self._checkpoint_call())

    async def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``checkpoint()`` to ``path``."""
        data = await self.checkpoint()
        await asyncio.to_thread(Path(path).write_bytes, data)

    async def fork(self, *, name: str | None = None, tags: list[str] | None = None) -> AsyncSession:
        """A new session with this one's state and settings (see ``Session.fork``)."""
        resource = await run_async(self._client.request, self._fork_call(name, tags))
        return AsyncSession(self._client, resource, gradient_dtype=self.gradient_dtype)

    async def delete(self) -> None:
        """Delete the session and all its state."""
        await run_async(self._client.request, self._delete_call())


def wire_bytes(vector: npt.NDArray[Any], wire: str) -> bytes | memoryview:
    """A vector's little-endian bytes in the wire dtype; bfloat16 rounded to nearest,
    ties to even. A vector already in the wire dtype is not copied: its bytes are a
    view (a large gradient is sent from where it lies)."""
    if wire != "bfloat16":
        little = np.ascontiguousarray(vector, dtype=np.dtype(wire).newbyteorder("<"))
        return little.data.cast("B")
    bits = np.ascontiguousarray(vector, dtype=np.float32).view(np.uint32)
    rounded = (bits + ((bits >> 16) & 1) + np.uint32(0x7FFF)) >> 16
    return rounded.astype("<u2").tobytes()


def flat_vector(values: npt.ArrayLike, size: int, what: str) -> npt.NDArray[Any]:
    """``values`` as a flat array of ``size`` numbers, or ValueError."""
    array = np.asarray(values)
    if array.size != size:
        raise ValueError(f"{what} has {array.size} elements; the session has {size}")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{what} must hold numbers, not {array.dtype}")
    return array.reshape(-1)
