"""Every setting of a session, its default and its bounds, once.

``SessionSettings`` is the one declaration: the API's create, PATCH and resource
documents derive their fields from it (``api/schemas.py``), the domain keeps it in the
record, storage writes each field as a meta hash field of the same name, and the SDK's
checked copy (``adamhub._settings``) is held equal to it by a test. Adding a setting is
adding a field here (with its docs and a test).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_serializer,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from adamhub_service.model.fields import MAX_STEP, Finite, refuse_nulls, whole
from adamhub_service.optim import Aggregate, FloatArray, aggregate
from adamhub_service.optim.aggregates import DEFAULT_TRIM

MAX_HISTORY_STEPS = 1_000_000
DEFAULT_HISTORY_POINTS = 10_000
MAX_HISTORY_POINTS = 100_000
MAX_IDLE_SECONDS = 10 * 365 * 86_400
MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 32
MAX_NAME_LENGTH = 256
MAX_TAGS = 16
TAG_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Contributions per round: far beyond any data-parallel job's workers.
MAX_CONTRIBUTIONS = 100_000
MAX_ROUND_TIMEOUT_SECONDS = 86_400.0
# Samples a contribution stands for (the Adamhub-Samples header), and a round's target.
MAX_SAMPLES = MAX_STEP


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels deep (iterative: no recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in children)
    return False


def _small_and_shallow(metadata: dict[str, Any]) -> dict[str, Any]:
    if _deeper_than(metadata, MAX_METADATA_DEPTH):
        raise ValueError(f"metadata is nested over {MAX_METADATA_DEPTH} levels deep")
    if len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is over {MAX_METADATA_BYTES} bytes as JSON; keep it small")
    return metadata


def _distinct(tags: tuple[str, ...]) -> tuple[str, ...]:
    # A set in meaning, a list on the wire: kept in the order given, each once.
    return tuple(dict.fromkeys(tags))


Contributions = Annotated[int, Strict(), Field(ge=1, le=MAX_CONTRIBUTIONS), BeforeValidator(whole)]
Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_small_and_shallow),
    Field(description="A free JSON object, kept as given (at most 64 KiB as JSON)."),
]
Name = Annotated[
    str, Field(max_length=MAX_NAME_LENGTH, description="Free text, to find the session by.")
]
Tag = Annotated[str, Field(pattern=TAG_PATTERN.pattern)]
Tags = Annotated[
    tuple[Tag, ...],
    Strict(False),
    Field(
        max_length=MAX_TAGS,
        description=f"Up to {MAX_TAGS} labels, each 1–64 of `A-Z a-z 0-9 . _ : -`, to "
        "list sessions by (`GET /v1/sessions?tag=…`).",
    ),
    AfterValidator(_distinct),
]


class RoundRule(BaseModel):
    """Synchronous rounds: one Adam step per round, on the samples-weighted mean
    Σ nᵢ·gᵢ / Σ nᵢ of its contributions. A round closes at `contributions` gradients or
    at `target_samples` samples (exactly one is set), or `timeout_seconds` after its
    first contribution when `min_contributions` are in."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        json_schema_extra={
            "oneOf": [
                {"required": ["contributions"], "not": {"required": ["target_samples"]}},
                {"required": ["target_samples"], "not": {"required": ["contributions"]}},
            ]
        },
    )

    contributions: Contributions | SkipJsonSchema[None] = Field(
        default=None, description="Close a round at this many contributions (K workers)."
    )
    target_samples: (
        Annotated[int, Strict(), Field(ge=1, le=MAX_SAMPLES), BeforeValidator(whole)]
        | SkipJsonSchema[None]
    ) = Field(default=None, description="Close a round once its samples reach this many.")
    timeout_seconds: (
        Annotated[Finite, Field(gt=0, le=MAX_ROUND_TIMEOUT_SECONDS)] | SkipJsonSchema[None]
    ) = Field(
        default=None,
        description="Close a round this long after its first contribution, when "
        "min_contributions are in (else at the one that makes them).",
    )
    min_contributions: Contributions = Field(
        default=1, description="The fewest contributions a round closes with at its timeout."
    )
    aggregate: Aggregate = Field(
        default="mean",
        description="How a round's contributions become its gradient: `mean` "
        "(samples-weighted), or a robust aggregate weighing each contribution the same — "
        "`trimmed_mean` (per coordinate, `trim` of the values cut from each end), "
        "`median` (per coordinate), `centered_clip` (Karimireddy et al. 2021, radius "
        "`clip_radius`).",
    )
    trim: Annotated[Finite, Field(ge=0, lt=0.5)] | SkipJsonSchema[None] = Field(
        default=None,
        description=f"trimmed_mean: floor(trim × n) of n values are cut from each end "
        f"(default {DEFAULT_TRIM}).",
    )
    clip_radius: Annotated[Finite, Field(gt=0)] | SkipJsonSchema[None] = Field(
        default=None, description="centered_clip (required there): the clipping radius τ."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, values: Any) -> Any:
        return refuse_nulls(values)

    @model_validator(mode="after")
    def _one_target(self) -> RoundRule:
        if (self.contributions is None) == (self.target_samples is None):
            raise ValueError("rounds need exactly one of 'contributions' and 'target_samples'")
        if self.contributions is not None and self.min_contributions > self.contributions:
            raise ValueError("rounds.min_contributions may not exceed contributions")
        if self.trim is not None and self.aggregate != "trimmed_mean":
            raise ValueError("rounds.trim goes with aggregate 'trimmed_mean'")
        if (self.clip_radius is not None) != (self.aggregate == "centered_clip"):
            raise ValueError(
                "rounds.clip_radius goes with aggregate 'centered_clip', which needs it"
            )
        return self

    def aggregated(self, contributions: Sequence[tuple[int, FloatArray]], dtype: str) -> FloatArray:
        """The round's gradient of ``(samples, gradient)`` contributions, in ``dtype``."""
        return aggregate(
            contributions,
            dtype,
            kind=self.aggregate,
            trim=DEFAULT_TRIM if self.trim is None else self.trim,
            clip_radius=self.clip_radius,
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set (the stored and served form; ``lua/contribute.lua``
        reads it)."""
        return self.model_dump(exclude_none=True)

    def needed(self, contributions: int, samples: int) -> int:
        """What a round holding this much still needs: contributions, or samples."""
        if self.contributions is not None:
            return max(0, self.contributions - contributions)
        assert self.target_samples is not None
        return max(0, self.target_samples - samples)


class ScreenRule(BaseModel):
    """Screening of the gradients workers send: one whose L2 norm exceeds
    `max_norm_ratio` × the median norm of the last `window` accepted ones (once that many
    are accepted), or that is not finite, is refused (422) and changes nothing but its
    worker's record; a worker refused `quarantine_after` times in a row is refused
    (403) for `quarantine_seconds`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_norm_ratio: Annotated[Finite, Field(gt=1, le=1e12)] = Field(
        default=10.0, description="The bound on a norm, as a multiple of the window's median."
    )
    window: Annotated[int, Strict(), Field(ge=1, le=10_000), BeforeValidator(whole)] = Field(
        default=20, description="How many accepted norms the median is taken over."
    )
    quarantine_after: Annotated[
        int, Strict(), Field(ge=1, le=1_000_000), BeforeValidator(whole)
    ] = Field(default=3, description="Refusals in a row that quarantine a worker.")
    quarantine_seconds: Annotated[Finite, Field(gt=0, le=MAX_IDLE_SECONDS)] = Field(
        default=300.0, description="How long a quarantine lasts."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, values: Any) -> Any:
        return refuse_nulls(values)


class SessionSettings(BaseModel):
    """A session's settings apart from its optimizer: each with its default and bounds.

    The settings in ``FIXED`` are chosen at creation and never change; every other one
    may be changed by PATCH, where null (for a setting that may be null or empty) puts
    it back to its default.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    FIXED: ClassVar[frozenset[str]] = frozenset({"rounds"})

    name: Name | None = None
    metadata: Metadata = Field(default_factory=dict)
    tags: Tags = ()
    history_steps: Annotated[
        int,
        Strict(),
        Field(
            ge=0,
            le=MAX_HISTORY_STEPS,
            description="Keep what rolling back to any of the last this many steps needs.",
        ),
        BeforeValidator(whole),
    ] = 0
    max_staleness: (
        Annotated[
            int,
            Strict(),
            Field(
                ge=0,
                le=MAX_STEP,
                description="Refuse a gradient whose Adamhub-Base-Step is more than this "
                "many steps behind t (409 stale-gradient); null: no bound.",
            ),
            BeforeValidator(whole),
        ]
        | None
    ) = None
    rounds: RoundRule | None = Field(
        default=None,
        description="Synchronous rounds (fixed at creation); null: every gradient is a step.",
    )
    history_points: Annotated[
        int,
        Strict(),
        Field(
            ge=0,
            le=MAX_HISTORY_POINTS,
            description="Keep the points (loss, norms, lr, …) of this many of the newest steps.",
        ),
        BeforeValidator(whole),
    ] = DEFAULT_HISTORY_POINTS
    expires_after_idle_seconds: (
        Annotated[
            int,
            Strict(),
            Field(
                ge=60,
                le=MAX_IDLE_SECONDS,
                description="Delete the session after this many seconds without a change "
                "(steps, settings); null: keep it.",
            ),
            BeforeValidator(whole),
        ]
        | None
    ) = None

    screen: ScreenRule | None = Field(
        default=None,
        description="Screening of outlier gradients and quarantine of workers; null: off.",
    )

    @field_serializer("rounds")
    def _rounds_as_set(self, rounds: RoundRule | None) -> dict[str, Any] | None:
        return None if rounds is None else rounds.as_dict()

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every setting's name, in declaration order."""
        return tuple(cls.model_fields)

    @classmethod
    def changeable(cls) -> tuple[str, ...]:
        """The settings a PATCH may change."""
        return tuple(name for name in cls.model_fields if name not in cls.FIXED)

    @classmethod
    def default_of(cls, name: str) -> Any:
        """A setting's default."""
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def nullable(cls, name: str) -> bool:
        """Whether a PATCH may send null for the setting (back to its default): one
        whose default is null or empty."""
        return cls.default_of(name) in (None, {}, ())

    def evolve(self, **changes: Any) -> SessionSettings:
        """A copy with some settings changed (already validated)."""
        return self.model_copy(update=changes)

    def stored(self) -> dict[str, Any]:
        """Each setting as JSON-ready data (the stored and served form)."""
        return self.model_dump(mode="json")
