"""Checkpoints: one step's optimizer state as a safetensors file, and back.

The file holds the tensors ``params``, ``exp_avg``, ``exp_avg_sq`` (and
``max_exp_avg_sq`` with AMSGrad) in the session dtype, and string metadata: ``format``
(``adamhub-checkpoint/1``), ``t``, ``dtype``, ``optimizer`` and ``param_groups`` (JSON).
Any safetensors reader opens it; nothing in it is executable (no pickle).
"""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import safetensors.numpy

from adamhub_service import errors
from adamhub_service.model.optimizer_json import optimizer_from_json
from adamhub_service.optim import AdamConfig, AdamState

FORMAT = "adamhub-checkpoint/1"
DTYPES = ("float32", "float64")
_TENSORS = ("params", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A session's state at one step, with the optimizer config it continues with."""

    state: AdamState
    config: AdamConfig
    dtype: str


def encode(checkpoint: Checkpoint) -> bytes:
    """The safetensors file of a checkpoint."""
    state, config = checkpoint.state, checkpoint.config
    tensors = {
        "params": state.params,
        "exp_avg": state.exp_avg,
        "exp_avg_sq": state.exp_avg_sq,
    }
    if state.max_exp_avg_sq is not None:
        tensors["max_exp_avg_sq"] = state.max_exp_avg_sq
    optimizer = dataclasses.asdict(config)
    groups = optimizer.pop("param_groups")
    metadata = {
        "format": FORMAT,
        "t": str(state.step),
        "dtype": checkpoint.dtype,
        "optimizer": json.dumps(optimizer),
        "param_groups": json.dumps(
            [{k: v for k, v in group.items() if v is not None} for group in groups]
        ),
    }
    if state.segment_steps is not None:
        # Each segment's (tensor's) own step count, as torch's per-parameter ``step``.
        metadata["segment_steps"] = json.dumps(list(state.segment_steps))
    return safetensors.numpy.save(tensors, metadata=metadata)


def decode(data: bytes, *, max_size: int) -> Checkpoint:
    """A checkpoint from its file; 422 ``invalid-checkpoint`` saying what is wrong."""
    metadata = _metadata(data)
    if metadata.get("format") != FORMAT:
        raise _invalid(f"metadata 'format' is {metadata.get('format')!r}, not {FORMAT!r}")
    dtype = metadata.get("dtype")
    if dtype not in DTYPES:
        raise _invalid(f"metadata 'dtype' must be one of {', '.join(DTYPES)}")
    t = metadata.get("t", "")
    if not t.isdigit():
        raise _invalid("metadata 't' must be a whole number")
    try:
        optimizer = json.loads(metadata["optimizer"])
        optimizer["param_groups"] = json.loads(metadata.get("param_groups", "[]"))
        config = optimizer_from_json(optimizer)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _invalid(f"metadata 'optimizer' or 'param_groups' is not valid: {exc}") from exc
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as exc:  # the reader's own error type; its message says what
        raise _invalid(f"not a readable safetensors file: {exc}") from exc
    expected = set(_TENSORS if config.amsgrad else _TENSORS[:3])
    if set(tensors) != expected:
        raise _invalid(f"the tensors must be {sorted(expected)}, not {sorted(tensors)}")
    size = tensors["params"].size
    for name, tensor in tensors.items():
        if tensor.dtype != np.dtype(dtype) or tensor.ndim != 1 or tensor.size != size:
            raise _invalid(f"tensor {name!r} must be a {dtype} vector of {size} elements")
        if not np.isfinite(tensor).all():
            raise _invalid(f"tensor {name!r} has a value that is not finite")
    if not 1 <= size <= max_size:
        raise _invalid(f"{size} parameters; this service takes 1 to {max_size}")
    try:
        config.segments(size)
    except ValueError as exc:
        raise _invalid(str(exc)) from exc
    ranges = config.tensor_ranges(size)
    if ranges[-1][1] != size:
        raise _invalid(f"the segments cover {ranges[-1][1]} parameters; the tensors hold {size}")
    segment_steps = _segment_steps(metadata, len(ranges), int(t))
    state = AdamState(
        params=tensors["params"],
        exp_avg=tensors["exp_avg"],
        exp_avg_sq=tensors["exp_avg_sq"],
        max_exp_avg_sq=tensors.get("max_exp_avg_sq"),
        step=int(t),
        segment_steps=segment_steps,
    )
    return Checkpoint(state, config, dtype)


def _segment_steps(metadata: dict[str, Any], segments: int, t: int) -> tuple[int, ...] | None:
    """The segments' own step counts (None when each is at ``t``)."""
    if "segment_steps" not in metadata:
        return None
    try:
        steps = json.loads(metadata["segment_steps"])
    except ValueError as exc:
        raise _invalid("metadata 'segment_steps' is not JSON") from exc
    if (
        not isinstance(steps, list)
        or len(steps) != segments
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= t for s in steps)
    ):
        raise _invalid(f"metadata 'segment_steps' must be {segments} step counts from 0 to t={t}")
    return None if all(step == t for step in steps) else tuple(steps)


def _metadata(data: bytes) -> dict[str, Any]:
    # The safetensors header: an 8-byte little-endian length, then JSON with the tensors
    # and "__metadata__" (the readers of the library do not return the metadata).
    if len(data) < 8:
        raise _invalid("not a safetensors file: it is shorter than its header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise _invalid("not a safetensors file: its header runs past the end")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as exc:
        raise _invalid("not a safetensors file: its header is not JSON") from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise _invalid("the file has no metadata; an adamhub checkpoint has 'format', 't', …")
    return metadata


def _invalid(detail: str) -> errors.InvalidCheckpoint:
    return errors.InvalidCheckpoint(detail)
