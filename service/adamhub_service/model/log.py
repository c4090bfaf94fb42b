"""The stored forms of the gradient log and of snapshots (see ``lua/common.lua``)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from adamhub_service.model.optimizer_json import optimizer_from_json, optimizer_json
from adamhub_service.optim import AdamConfig

# The one vector of a log entry: its gradient.
GRADIENT = "g"


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

    def encode(self) -> str:
        """As stored: ``<write id> <dtype> <bytes>[ <optimizer json>]``."""
        head = f"{self.write_id} {self.dtype} {self.nbytes}"
        return head if self.config is None else f"{head} {optimizer_json(self.config)}"

    @classmethod
    def decode(cls, raw: bytes | str) -> LogEntry:
        """From its stored form."""
        parts = text(raw).split(" ", 3)
        config = optimizer_from_json(orjson.loads(parts[3])) if len(parts) > 3 else None
        return cls(parts[0], parts[1], int(parts[2]), config)


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    """A stored snapshot: its write id, the vectors it holds, and the optimizer config
    of the step it was taken after (the config later log entries change)."""

    write_id: str
    vectors: str
    config: AdamConfig

    def encode(self) -> str:
        """As stored: ``<write id> <vectors> <optimizer json>``."""
        return f"{self.write_id} {self.vectors} {optimizer_json(self.config)}"

    @classmethod
    def decode(cls, raw: bytes | str) -> SnapshotRef:
        """From its stored form."""
        write_id, vectors, config = text(raw).split(" ", 2)
        return cls(write_id, vectors, optimizer_from_json(orjson.loads(config)))


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

    def encode(self) -> str:
        """As stored: ``<write id> <dtype> <bytes> <samples> <loss or ->[ <optimizer
        json>]``."""
        loss = "-" if self.loss is None else repr(self.loss)
        head = f"{self.write_id} {self.dtype} {self.nbytes} {self.samples} {loss}"
        return head if self.config is None else f"{head} {optimizer_json(self.config)}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Contribution:
        """From its stored form."""
        parts = text(raw).split(" ", 5)
        loss = None if parts[4] == "-" else float(parts[4])
        config = optimizer_from_json(orjson.loads(parts[5])) if len(parts) > 5 else None
        return cls(parts[0], parts[1], int(parts[2]), int(parts[3]), loss, config)
