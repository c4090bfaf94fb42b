"""The stored forms of the gradient log and of snapshots (see ``lua/common.lua``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from adamhub_service.model.optimizer_json import optimizer_from_json, optimizer_json
from adamhub_service.model.quantized import INT8_BLOCKS, elements_in
from adamhub_service.optim import AdamConfig

# The vectors of a log entry: its gradient, and the scales of one in 8-bit blocks.
GRADIENT = "g"
SCALES = "s"


def encode_indices(values: tuple[int, ...]) -> str:
    """Whole numbers as stored: ``3,0,7``."""
    return ",".join(str(value) for value in values)


def decode_indices(raw: str) -> tuple[int, ...]:
    """Whole numbers from their stored form."""
    return tuple(int(part) for part in raw.split(","))


def _tail(config: AdamConfig | None, segments: tuple[int, ...] | None) -> str:
    """The optional end of a logged gradient's form: `` <optimizer json or ->`` and
    `` <segments,…>``, each only when needed."""
    shown = None if config is None else optimizer_json(config)
    if segments is None:
        return "" if shown is None else f" {shown}"
    return f" {shown or '-'} {encode_indices(segments)}"


def _parse_tail(parts: list[str]) -> tuple[AdamConfig | None, tuple[int, ...] | None]:
    """The config and segments of a form's optional end (see ``_tail``)."""
    config = None
    if parts and parts[0] != "-":
        config = optimizer_from_json(orjson.loads(parts[0]))
    return config, decode_indices(parts[1]) if len(parts) > 1 else None


def text(raw: bytes | str) -> str:
    """A stored value as text."""
    return raw.decode() if isinstance(raw, bytes) else raw


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One logged step: its gradient's write id, dtype and bytes, and the optimizer
    config it was computed with when that differs from the step before's."""

    write_id: str
    dtype: str
    nbytes: int
    config: AdamConfig | None = None
    # The segments (tensors) the step carried, when not all (a partial step).
    segments: tuple[int, ...] | None = None

    def encode(self) -> str:
        """As stored: ``<write id> <dtype> <bytes>[ <optimizer json or ->[ <segments,…>]]``."""
        return f"{self.write_id} {self.dtype} {self.nbytes}" + _tail(self.config, self.segments)

    @classmethod
    def decode(cls, raw: bytes | str) -> LogEntry:
        """From its stored form."""
        parts = text(raw).split(" ")
        return cls(parts[0], parts[1], int(parts[2]), *_parse_tail(parts[3:]))

    @property
    def elements(self) -> int:
        """How many numbers the logged gradient holds."""
        if self.dtype == INT8_BLOCKS:
            return elements_in(self.nbytes)
        return self.nbytes // np.dtype(self.dtype).itemsize


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    """A stored snapshot: its write id, the vectors it holds, and the optimizer config
    of the step it was taken after (the config later log entries change)."""

    write_id: str
    vectors: str
    config: AdamConfig
    # The segments' step counts when they differ from the snapshot's step.
    segment_steps: tuple[int, ...] | None = None

    def encode(self) -> str:
        """As stored: ``<write id> <vectors> <optimizer json>[ <segment steps,…>]``."""
        head = f"{self.write_id} {self.vectors} {optimizer_json(self.config)}"
        return (
            head if self.segment_steps is None else f"{head} {encode_indices(self.segment_steps)}"
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> SnapshotRef:
        """From its stored form."""
        parts = text(raw).split(" ")
        steps = decode_indices(parts[3]) if len(parts) > 3 else None
        return cls(parts[0], parts[1], optimizer_from_json(orjson.loads(parts[2])), steps)


@dataclass(frozen=True, slots=True)
class Contribution:
    """One contribution to a round: its gradient's write id, dtype and bytes, the
    samples it stands for, the loss its worker reported, and the optimizer config its
    settings (``Adamhub-Optimizer``) asked for, if it carried any."""

    write_id: str
    dtype: str
    nbytes: int
    samples: int
    loss: float | None = None
    config: AdamConfig | None = None
    # The segments (tensors) it carries, when not all.
    segments: tuple[int, ...] | None = None

    def encode(self) -> str:
        """As stored: ``<write id> <dtype> <bytes> <samples> <loss or ->[ <optimizer
        json or ->[ <segments,…>]]``."""
        loss = "-" if self.loss is None else repr(self.loss)
        head = f"{self.write_id} {self.dtype} {self.nbytes} {self.samples} {loss}"
        return head + _tail(self.config, self.segments)

    @classmethod
    def decode(cls, raw: bytes | str) -> Contribution:
        """From its stored form."""
        parts = text(raw).split(" ")
        loss = None if parts[4] == "-" else float(parts[4])
        return cls(parts[0], parts[1], int(parts[2]), int(parts[3]), loss, *_parse_tail(parts[5:]))

    @property
    def elements(self) -> int:
        """How many numbers the contribution's gradient holds."""
        return self.nbytes // np.dtype(self.dtype).itemsize
