"""``RemoteAdam`` and ``RemoteAdamW``: torch optimizers whose state lives in an adamhub
session. Porting a training script means changing the optimizer's constructor::

    opt = RemoteAdamW(model.parameters(), lr=1e-3)   # was torch.optim.AdamW(...)
    for batch in data:
        opt.zero_grad()
        loss(model, batch).backward()
        opt.step()

Needs ``adamhub[torch]``.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.numpy
import torch

from adamhub._client import Client
from adamhub._errors import (
    NotFoundError,
    OutlierGradientError,
    SizeChangedError,
    StaleGradientError,
    UnprocessableEntityError,
)
from adamhub._session import Session
from adamhub.quantization import ErrorFeedback

# The hyperparameters of a torch param group that a session's param group holds.
_GROUP_FIELDS = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize")
# Model dtypes and the session dtype that keeps their master weights.
_SESSION_DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float32",
    torch.bfloat16: "float32",
}
_CHECKPOINT_FORMAT = "adamhub-checkpoint/1"


class RemoteAdam(torch.optim.Optimizer):
    """``torch.optim.Adam`` computed by an adamhub service: the same arguments, the same
    results (to float rounding), the state in a session that outlives the process.

    Every param group becomes a param group of one session; each ``step()`` is one
    request carrying every gradient, and any hyperparameters changed since the last step
    (as schedulers do). Parameters in float16 or bfloat16 train on float32 master weights
    kept by the session; the model receives them rounded. Parameters that do not require
    gradients are left out, as torch leaves them untouched.

    A new session is named ``name``, else after ``model``'s class (or the script) and
    the host, as ``MyNet@gpu-7``, so that it is found in lists and the dashboard;
    ``tags`` label it (``client.list_sessions(tag=…)``).

    ``client`` defaults to ``adamhub.Client()`` (``$ADAMHUB_BASE_URL``,
    ``$ADAMHUB_API_KEY``). ``session`` (an id or a ``Session``) attaches to an existing
    session, whose parameters are copied into the model. ``on_nonfinite``: ``"raise"``
    (a gradient with NaN or infinity raises ``FloatingPointError``) or ``"skip"`` (the
    step is skipped, as ``GradScaler`` does, and counted in ``skipped_steps``).
    ``on_outlier``: when the session screens gradients (``screen``) and refuses one as an
    outlier, ``"raise"`` (``adamhub.OutlierGradientError``) or ``"skip"`` (counted in
    ``outlier_steps``).

    Data parallel, as DDP: ``rounds=K`` makes a session whose every step is the mean of
    K workers' gradients (or pass ``rounds={"target_samples": B, …}``); the other
    workers attach with ``session=<its id>``. Each worker's ``step()`` returns when its
    round closes, every worker then holding the same parameters. ``step(samples=n)``
    weights a worker's gradient by its batch size. A gradient computed at parameters the
    session has left (``StaleGradientError``) is skipped, the newest parameters are
    copied in, and it is counted in ``stale_steps``.
    ``gradient_dtype`` sets how gradients travel (default: the client's):
    ``"bfloat16"``, ``"float16"``, or ``"int8"`` — 8-bit blocks with error feedback,
    whose residual ``state_dict()`` keeps (``adamhub.error_feedback``) and
    ``load_state_dict`` restores, so a resumed run sends what the last one had not.
    ``foreach``, ``fused``, ``capturable`` and ``differentiable`` are accepted and
    ignored: the service decides how to compute.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        client: Client | None = None,
        session: Session | str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        on_nonfinite: Literal["raise", "skip"] = "raise",
        on_outlier: Literal["raise", "skip"] = "raise",
        rounds: int | dict[str, Any] | None = None,
        model: torch.nn.Module | None = None,
        gradient_dtype: str | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', not {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        if on_outlier not in ("raise", "skip"):
            raise ValueError(f"on_outlier must be 'raise' or 'skip', not {on_outlier!r}")
        self.on_outlier = on_outlier
        self.outlier_steps = 0
        self.skipped_steps = 0
        self.stale_steps = 0
        self._client = client if client is not None else Client()
        # How gradients travel ("bfloat16", "float16", "int8": 8-bit with error
        # feedback, whose residual state_dict keeps); default: the client's.
        self._gradient_dtype = gradient_dtype
        if len({bool(group["amsgrad"]) for group in self.param_groups}) != 1:
            raise ValueError("amsgrad is per session: give every param group the same")
        self._size = sum(p.numel() for p in self._trainable())
        if self._size == 0:
            raise ValueError("RemoteAdam got no parameters that require gradients")
        kinds = {p.dtype for p in self._trainable()}
        dtypes = {_SESSION_DTYPES[kind] for kind in kinds if kind in _SESSION_DTYPES}
        if len(dtypes) != 1 or not kinds <= _SESSION_DTYPES.keys():
            raise TypeError(
                f"RemoteAdam needs float32, float16 and bfloat16 parameters, or float64 ones "
                f"alone; got {sorted(str(kind) for kind in kinds)}"
            )
        self._dtype = dtypes.pop()
        # The session is made when it is first needed (a step, state_dict, pull), so
        # that torch's resume order — make the optimizer, then load_state_dict — leaves
        # one session: the checkpoint's, not an empty one beside it.
        self._session: Session | None = None
        self._name = name
        self._tags = list(tags or [])
        self._model_name = default_name(model) if name is None else name
        self._rounds: dict[str, Any] | None = (
            {"contributions": rounds} if isinstance(rounds, int) else rounds
        )
        if session is not None:
            if rounds is not None:
                raise ValueError("rounds is set when a session is made, not when attaching")
            self._attach(self._client.session(session) if isinstance(session, str) else session)
            self.pull()
        self._sent = self._settings()

    @property
    def session(self) -> Session:
        """The session this optimizer steps: made on first use (named after ``name``,
        else the model and host; with ``tags`` and ``rounds``), or the one attached or
        resumed."""
        if self._session is None:
            base = self.param_groups[0]
            self._session = self._client.create_session(
                self._flat(p.detach() for p in self._trainable()),
                dtype=self._dtype,
                optimizer={**_fields(base), "amsgrad": bool(base["amsgrad"])},
                param_groups=self._session_groups(),
                segments=[p.numel() for p in self._trainable()],
                name=self._model_name,
                tags=self._tags,
                rounds=self._rounds,
            )
            self._use_wire(self._session)
            self._sent = self._settings()
        return self._session

    @session.setter
    def session(self, session: Session) -> None:
        self._attach(session)

    def _attach(self, session: Session) -> None:
        if session.size != self._size:
            raise ValueError(
                f"the session has {session.size} parameters; the model has {self._size}"
            )
        self._use_wire(session)
        self._session = session

    def _use_wire(self, session: Session) -> None:
        if self._gradient_dtype is not None:
            session.gradient_dtype = self._gradient_dtype

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``; once the optimizer is made, the session grows by
        the group too (its parameters as they are now, m = v = 0), as torch's state does.
        When another worker has added the same group already, this one takes the
        session's values for it instead."""
        super().add_param_group(param_group)
        if not hasattr(self, "_size"):
            return  # torch's constructor adding the groups it was given
        added = [p for p in self.param_groups[-1]["params"] if p.requires_grad]
        if not added:
            return
        self._size += sum(p.numel() for p in added)
        if self._session is None:
            return  # made at its first use, with every group
        session = self._session
        session.refresh()
        if session.size != self._size:
            session.add_param_group(
                self._flat(p.detach() for p in added),
                segments=[p.numel() for p in added],
                **_fields(self.param_groups[-1]),
            )
        self.pull()
        self._sent = self._settings()

    # -- what the session sees ------------------------------------------------------

    def _groups(self) -> list[list[torch.Tensor]]:
        return [[p for p in group["params"] if p.requires_grad] for group in self.param_groups]

    def _trainable(self) -> list[torch.Tensor]:
        return [p for params in self._groups() for p in params]

    def _session_groups(self) -> list[dict[str, Any]]:
        """One session group per torch group that has trainable parameters."""
        return [
            {"size": sum(p.numel() for p in params), **_fields(group)}
            for group, params in zip(self.param_groups, self._groups(), strict=True)
            if params
        ]

    def _settings(self) -> list[dict[str, Any]]:
        return [
            _fields(group)
            for group, params in zip(self.param_groups, self._groups(), strict=True)
            if params
        ]

    def _flat(self, tensors: Iterable[torch.Tensor]) -> np.ndarray:
        dtype = torch.float64 if self._dtype == "float64" else torch.float32
        return torch.cat([t.reshape(-1).to("cpu", dtype) for t in tensors]).numpy()

    @torch.no_grad()
    def _write_back(self, flat: np.ndarray) -> None:
        values = torch.from_numpy(np.ascontiguousarray(flat))
        offset = 0
        for param in self._trainable():
            count = param.numel()
            param.copy_(values[offset : offset + count].view_as(param))  # rounds to its dtype
            offset += count

    def pull(self) -> None:
        """Copy the session's newest parameters into the model (another worker's steps
        included)."""
        self._write_back(self.session.params())

    # -- stepping -------------------------------------------------------------------

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], float] | None = None, *, samples: int | None = None
    ) -> float | None:
        """Send the gradients, apply the update remotely, copy the new parameters in.
        ``samples``: the batch size behind these gradients, their weight in a round."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._trainable()
        carried = [i for i, p in enumerate(params) if p.grad is not None]
        if not carried:
            return loss  # torch steps nothing either
        if any(params[i].grad.is_sparse for i in carried):  # type: ignore[union-attr]
            raise RuntimeError(
                "RemoteAdam does not support sparse gradients, please consider SparseAdam instead"
            )
        segments = None
        if len(carried) < len(params):
            # A partial step: torch skips exactly the parameters without a gradient; so
            # does the session, segment by segment.
            if not self.session.segments:
                raise RuntimeError(
                    f"parameters {sorted(set(range(len(params))) - set(carried))} have no "
                    "gradient at this step, and this session was made without segments "
                    "(by an older client): it steps its parameters together"
                )
            segments = carried
        gradient = self._flat(params[i].grad for i in carried)  # type: ignore[misc]
        current = self._settings()
        settings = None
        if current != self._sent:
            changed = [
                {k: v for k, v in now.items() if sent.get(k) != v}
                for now, sent in zip(current, self._sent, strict=True)
            ]
            settings = {"param_groups": changed}
        try:
            reported = None if loss is None else float(loss)  # a tensor or a number
            new = self.session.step(
                gradient, settings=settings, samples=samples, loss=reported, segments=segments
            )
        except SizeChangedError as exc:
            raise RuntimeError(
                f"session {self.session.id} has grown to {exc.problem.get('size')} "
                f"parameters (segments {exc.problem.get('segments')}): another worker added "
                "a param group. Call add_param_group with the same parameters here (this "
                "worker then takes the session's values for them), or make a new RemoteAdam "
                "attached to the session"
            ) from exc
        except StaleGradientError as exc:
            # Computed at parameters the session has left: go on from the newest.
            self.stale_steps += 1
            if exc.params is not None:
                self._write_back(exc.params)
            return loss
        except OutlierGradientError:
            # The session's screening refused it; nothing was applied.
            if self.on_outlier == "skip":
                self.outlier_steps += 1
                return loss
            raise
        except UnprocessableEntityError as exc:
            if exc.type is None or not exc.type.endswith("/non-finite-value"):
                raise
            if self.on_nonfinite == "skip":
                self.skipped_steps += 1
                return loss
            raise FloatingPointError(
                f"a gradient is not finite ({exc.problem.get('detail')}); nothing was "
                "applied. on_nonfinite='skip' skips such steps"
            ) from exc
        self._sent = current
        self._write_back(new)
        return loss

    # -- state dicts ----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Adam``'s format (``state[i]``: ``step``, ``exp_avg``,
        ``exp_avg_sq``, and ``max_exp_avg_sq`` with AMSGrad; ``param_groups``), read
        from the session, plus ``adamhub``: the session id and t."""
        file = self.session.checkpoint()
        tensors = safetensors.numpy.load(file)
        metadata = _metadata(file)
        t = int(metadata["t"])
        params = self._trainable()
        steps = json.loads(metadata.get("segment_steps", "null")) or [t] * len(params)
        offset = 0
        for param, step in zip(params, steps, strict=True):
            count = param.numel()
            part = slice(offset, offset + count)
            state = {
                "step": torch.tensor(float(step)),
                **{
                    name: torch.from_numpy(tensor[part].copy()).view_as(param)
                    for name, tensor in tensors.items()
                    if name != "params"
                },
            }
            self.state[param] = state
            offset += count
        document = super().state_dict()
        document["adamhub"] = {
            "session": self.session.id,
            "t": t,
            "name": self.session.name,
            "tags": list(self.session.tags),
        }
        if self.session.error_feedback is not None:
            # What 8-bit steps have not sent yet: a resumed run sends it.
            residual = self.session.error_feedback.residual
            document["adamhub"]["error_feedback"] = torch.from_numpy(residual.copy())
        return document

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of ``state_dict()``, or of ``torch.optim.Adam``/``AdamW``;
        training then goes on exactly from that state.

        When the state is where its session still is (torch's resume order: a new
        optimizer, then this), the optimizer attaches to that session and makes none.
        Otherwise (the session moved on, is gone, or the state came from elsewhere) a new
        session is made from it — with its name and tags, if it has them — with a
        warning when it left a session that moved on; the model's parameters are taken
        as they are now (load the model's own state dict first, as with torch)."""
        mark = state_dict.get("adamhub")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "adamhub"})
        if mark is not None:
            current = self._session_of(mark["session"])
            if current is not None and current.t == mark["t"]:
                self._attach(current)
                self._sent = self._settings()
                current.update(param_groups=self._settings())
                self._restore_feedback(mark)
                return
            if current is not None:
                warnings.warn(
                    f"session {current.id} has moved on to t={current.t} since this state "
                    f"(t={mark['t']}); going on from the state in a new session",
                    stacklevel=2,
                )
        name = self._name if self._name is not None else (mark or {}).get("name")
        tags = self._tags or (mark or {}).get("tags") or None
        self._session = self._client.import_session(
            self._checkpoint_of_state(), name=name or self._model_name, tags=tags
        )
        self._use_wire(self._session)
        self._sent = self._settings()
        self._restore_feedback(mark or {})

    def _restore_feedback(self, mark: dict[str, Any]) -> None:
        """The residual of 8-bit steps a state dict kept, into the session."""
        residual = mark.get("error_feedback")
        if residual is not None and self._session is not None:
            values = torch.as_tensor(residual).detach().cpu().numpy()
            self._session.error_feedback = ErrorFeedback(self._size, values)

    def _session_of(self, session_id: str) -> Session | None:
        """The session with this id, fresh; None when it is gone (or not this caller's)."""
        if self._session is not None and self._session.id == session_id:
            self._session.refresh()
            return self._session
        try:
            return self._client.session(session_id)
        except NotFoundError:
            return None

    def _checkpoint_of_state(self) -> bytes:
        """A checkpoint file of the loaded state and the model's current parameters."""
        params = self._trainable()
        steps = []
        names = ["exp_avg", "exp_avg_sq"]
        if self.param_groups[0]["amsgrad"]:
            names.append("max_exp_avg_sq")
        vectors: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for param in params:
            state = self.state.get(param, {})
            steps.append(int(state["step"]) if "step" in state else 0)
            for name in names:
                vectors[name].append(state.get(name, torch.zeros_like(param)))
        tensors = {"params": self._flat(p.detach() for p in params)}
        for name in names:
            tensors[name] = self._flat(vectors[name])
        base = self.param_groups[0]
        optimizer = {
            **_fields(base),
            "amsgrad": bool(base["amsgrad"]),
            "segment_sizes": [p.numel() for p in params],
        }
        # The session's t is the most steps a parameter took; each keeps its own count.
        metadata: dict[str, str] = {
            "format": _CHECKPOINT_FORMAT,
            "t": str(max(steps)),
            "dtype": self._dtype,
            "optimizer": json.dumps(optimizer),
            "param_groups": json.dumps(self._session_groups()),
            "segment_steps": json.dumps(steps),
        }
        return safetensors.numpy.save(tensors, metadata=metadata)


class RemoteAdamW(RemoteAdam):
    """``torch.optim.AdamW`` computed by an adamhub service (see ``RemoteAdam``): the
    same arguments, with AdamW's defaults (``weight_decay=1e-2``, decoupled)."""

    def __init__(
        self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], *args: Any, **options: Any
    ) -> None:
        # lr, betas, eps, weight_decay, amsgrad: positional as torch's, or by name.
        if len(args) < 4:
            options.setdefault("weight_decay", 1e-2)
        options.setdefault("decoupled_weight_decay", True)
        super().__init__(params, *args, **options)


def default_name(model: torch.nn.Module | None) -> str:
    """A new session's name: the model's class (else the script's name) and the host."""
    what = type(model).__name__ if model is not None else Path(sys.argv[0] or "python").stem
    return f"{what or 'python'}@{socket.gethostname()}"


def _fields(group: dict[str, Any]) -> dict[str, Any]:
    """A torch param group's hyperparameters as a session's group takes them."""
    values = {name: group.get(name, False) for name in _GROUP_FIELDS}
    values["lr"] = float(values["lr"])  # a scheduler may leave a tensor or an int
    values["betas"] = [float(b) for b in values["betas"]]
    values["eps"] = float(values["eps"])
    values["weight_decay"] = float(values["weight_decay"])
    values["decoupled_weight_decay"] = bool(values["decoupled_weight_decay"])
    values["maximize"] = bool(values["maximize"])
    return values


def _metadata(file: bytes) -> dict[str, str]:
    (length,) = struct.unpack("<Q", file[:8])
    metadata: dict[str, str] = json.loads(file[8 : 8 + length])["__metadata__"]
    return metadata
