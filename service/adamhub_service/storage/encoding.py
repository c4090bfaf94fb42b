"""Records and states as Redis stores them: meta hash fields and named vectors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from adamhub_service.model.log import Contribution, LogEntry
from adamhub_service.model.optimizer_json import optimizer_from_json
from adamhub_service.model.records import SessionRecord
from adamhub_service.model.settings import SessionSettings
from adamhub_service.optim import AdamState, FloatArray

# The vectors of a session's state, by their short stored names.
PARAMS, EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ = "p", "m", "v", "x"

_INT_FIELDS = ("size", "chunk_elements", "t", "rev")
# Fields of the meta hash that describe the storage, not the session (lua/common.lua).
_STORAGE_FIELDS = ("snap", "snap_t", "log_bytes")
_TEXT_FIELDS = ("id", "dtype", "head", "created_at", "updated_at", "tenant")
# Each session setting is a field of its own, as JSON (a number reads as itself in Lua).

MetaFields = dict[str, bytes | str | int]


def stored_fields(record: SessionRecord) -> tuple[str, ...]:
    """The vectors a session stores (max v only with AMSGrad)."""
    if record.optimizer.amsgrad:
        return (PARAMS, EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ)
    return (PARAMS, EXP_AVG, EXP_AVG_SQ)


def chunk_count(record: SessionRecord) -> int:
    """How many chunks each vector of the session is stored in."""
    return -(-record.size // record.chunk_elements)


def chunks_of(record: SessionRecord, logged: LogEntry | Contribution) -> int:
    """How many chunks a logged gradient is stored in (a partial one: fewer)."""
    return -(-logged.elements // record.chunk_elements)


def vectors_of(state: AdamState) -> dict[str, FloatArray]:
    """The stored vectors of a state, by stored name."""
    vectors = {PARAMS: state.params, EXP_AVG: state.exp_avg, EXP_AVG_SQ: state.exp_avg_sq}
    if state.max_exp_avg_sq is not None:
        vectors[MAX_EXP_AVG_SQ] = state.max_exp_avg_sq
    return vectors


def state_of(
    vectors: Mapping[str, FloatArray], step: int, segment_steps: tuple[int, ...] | None = None
) -> AdamState:
    """The state made of stored vectors."""
    return AdamState(
        params=vectors[PARAMS],
        exp_avg=vectors[EXP_AVG],
        exp_avg_sq=vectors[EXP_AVG_SQ],
        max_exp_avg_sq=vectors.get(MAX_EXP_AVG_SQ),
        step=step,
        segment_steps=segment_steps,
    )


def record_to_hash(record: SessionRecord) -> MetaFields:
    """Every field of a new record except ``rev``, which the commit script owns."""
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    fields.pop("rev")
    return record_changes(**fields)


def record_changes(**fields: Any) -> MetaFields:
    """Meta hash fields for a partial update of a record (``settings``: every setting)."""
    encoded: MetaFields = {}
    for key, value in fields.items():
        if key == "optimizer":
            encoded[key] = orjson.dumps(dataclasses.asdict(value))
        elif key == "settings":
            encoded.update(settings_fields(value))
        elif key == "grown_from":
            encoded[key] = orjson.dumps(list(value))
        elif key == "spread":
            encoded[key] = int(value)  # lua/common.lua reads '1'
        else:
            encoded[key] = value
    return encoded


def settings_fields(settings: SessionSettings, names: Any = None) -> MetaFields:
    """The meta hash fields of some settings (``names``), or of all."""
    stored = settings.stored()
    return {name: orjson.dumps(stored[name]) for name in (names or stored)}


def record_from_hash(raw: Mapping[Any, Any]) -> SessionRecord:
    """The record stored in a meta hash."""
    doc: dict[str, Any] = {text(key): value for key, value in raw.items()}
    for name in _STORAGE_FIELDS:
        doc.pop(name, None)
    # Records written before a setting existed have none: its default.
    settings = {
        name: orjson.loads(doc.pop(name)) for name in SessionSettings.names() if name in doc
    }
    for name in _INT_FIELDS:
        doc[name] = int(doc[name])
    for name in _TEXT_FIELDS:
        if name in doc:  # records of 0.1.0 have no tenant: theirs is the default
            doc[name] = text(doc[name])
    doc["optimizer"] = optimizer_from_json(orjson.loads(doc["optimizer"]))
    if "grown_from" in doc:
        doc["grown_from"] = tuple(orjson.loads(doc["grown_from"]))
    if "spread" in doc:
        doc["spread"] = int(doc["spread"]) == 1
    return SessionRecord(**doc, settings=SessionSettings.model_validate(settings, strict=False))


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value
