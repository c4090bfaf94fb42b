"""The documents of the HTTP API: validated on the way in, serialised on the way out.

These models are the one source of truth of the bodies: the routes validate requests
with them, build responses from them, and the OpenAPI document is generated from them.
Hyperparameter bounds come from ``optim`` (one rule set for create and PATCH).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from adamhub_service.api import negotiation
from adamhub_service.model.api_keys import ApiKey
from adamhub_service.model.fields import (
    MAX_STEP,
    Finite,
    NonNegativeWhole,
    PositiveWhole,
    StepCount,
    refuse_nulls,
)
from adamhub_service.model.principal import TENANT_PATTERN, Action
from adamhub_service.model.records import SESSION_ID_PATTERN, SessionRecord
from adamhub_service.model.settings import MAX_SAMPLES, Name, SessionSettings, Tags
from adamhub_service.optim import (
    BETA,
    EPS,
    FINAL_LR_RATIO,
    LR,
    MAX_GRAD_NORM,
    WEIGHT_DECAY,
    AdamConfig,
    FloatArray,
    ParamGroup,
    Schedule,
)
from adamhub_service.sessions.service import NewGroup, NewSession, NormalInitSpec
from adamhub_service.steps.values import StepSettings

WIRE_DTYPES = negotiation.WIRE_DTYPES

_STRICT = ConfigDict(extra="forbid", strict=True)
FLOAT32_MAX = float(np.finfo(np.float32).max)
_VECTOR_SCHEMA: dict[str, Any] = {"type": "array", "items": {"type": "number"}, "minItems": 1}

__all__ = ["MAX_SAMPLES", "MAX_STEP", "Name", "PositiveWhole", "refuse_nulls"]


Lr = Annotated[Finite, Field(**LR.as_field(), description="Learning rate α.")]
Beta = Annotated[Finite, Field(**BETA.as_field())]
# A JSON array is a tuple here; the elements stay strict numbers.
Betas = Annotated[
    tuple[Beta, Beta],
    Strict(False),
    Field(description="β1, β2: decay rates of the moments, each in [0, 1)."),
]
Eps = Annotated[Finite, Field(**EPS.as_field(), description="ε added to √v̂.")]
WeightDecay = Annotated[Finite, Field(**WEIGHT_DECAY.as_field())]
MaxGradNorm = Annotated[
    Finite,
    Field(
        **MAX_GRAD_NORM.as_field(),
        description="Clip the whole gradient to this L2 norm (clip_grad_norm_); null: off.",
    ),
]
Dtype = Literal["float32", "float64"]
MAX_PARAM_GROUPS = 1024


class ScheduleSettings(BaseModel):
    """The learning rate's schedule: lr·f(t) for the step being computed, t = 1, 2, …"""

    model_config = _STRICT

    kind: Literal["constant", "warmup_cosine", "warmup_linear"] = "constant"
    warmup_steps: StepCount = 0
    total_steps: StepCount = 0
    final_lr_ratio: Annotated[Finite, Field(**FINAL_LR_RATIO.as_field())] = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> ScheduleSettings:
        problems = self.schedule().problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def schedule(self) -> Schedule:
        """As the optimiser's schedule."""
        return Schedule(self.kind, self.warmup_steps, self.total_steps, self.final_lr_ratio)

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleSettings:
        """The settings of a schedule."""
        return cls.model_construct(**dataclasses.asdict(schedule))


class _GroupFields(BaseModel):
    """A group's fields may be left out, but not given as null (the schema says so)."""

    model_config = _STRICT

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, values: Any) -> Any:
        return refuse_nulls(values)


class GroupPatch(_GroupFields):
    """Changes to one param group (its size cannot change)."""

    lr: Lr | SkipJsonSchema[None] = None
    betas: Betas | SkipJsonSchema[None] = None
    eps: Eps | SkipJsonSchema[None] = None
    weight_decay: WeightDecay | SkipJsonSchema[None] = None
    decoupled_weight_decay: bool | SkipJsonSchema[None] = None
    maximize: bool | SkipJsonSchema[None] = None


class GroupSettings(GroupPatch):
    """A param group: the next ``size`` parameters, and the settings it overrides."""

    size: PositiveWhole

    def group(self) -> ParamGroup:
        """As the optimiser's param group."""
        return ParamGroup(**self.model_dump())

    @classmethod
    def of(cls, group: ParamGroup) -> dict[str, Any]:
        """A group as the API shows it: its size and the fields it sets."""
        return {"size": group.size, **group.overrides()}


GroupPatches = Annotated[
    list[GroupPatch],
    Field(max_length=MAX_PARAM_GROUPS, description="One entry per group, in order."),
]
MAX_SEGMENTS = 65_536
Segments = Annotated[
    list[PositiveWhole],
    Field(
        min_length=1,
        max_length=MAX_SEGMENTS,
        description="The sizes of the parameter tensors, in order, summing to `size`: a "
        "step may carry some of them only (`Adamhub-Segments`), each keeping its own step "
        "count. Param groups are whole segments.",
    ),
]
ParamGroups = Annotated[
    list[GroupSettings],
    Field(
        min_length=1,
        max_length=MAX_PARAM_GROUPS,
        description="Consecutive segments of the vector, sizes summing to `size`; each "
        "group's fields override `optimizer`'s.",
    ),
]


def _as_vector(value: Any) -> FloatArray:
    return negotiation.vector_from_json(value, "params")


# A JSON array of numbers, parsed into a float64 numpy array by `negotiation` (fast, and
# with problems that name the first bad element).
JsonVector = Annotated[FloatArray, PlainValidator(_as_vector), WithJsonSchema(_VECTOR_SCHEMA)]
# A numpy array serialised as a JSON array of numbers (by orjson, see ``render``).
VectorOut = Annotated[
    FloatArray,
    PlainValidator(lambda value: value),
    WithJsonSchema({"type": "array", "items": {"type": "number"}}),
]


# torch's defaults, as ``optim.AdamConfig`` holds them.
TORCH_DEFAULTS = AdamConfig()


class OptimizerSettings(BaseModel):
    """Adam's hyperparameters; every field optional, with torch's defaults."""

    model_config = _STRICT

    lr: Lr = TORCH_DEFAULTS.lr
    betas: Betas = TORCH_DEFAULTS.betas
    eps: Eps = TORCH_DEFAULTS.eps
    weight_decay: WeightDecay = TORCH_DEFAULTS.weight_decay
    decoupled_weight_decay: bool = Field(
        default=TORCH_DEFAULTS.decoupled_weight_decay,
        description="true: AdamW (Loshchilov & Hutter); false: L2 in the gradient.",
    )
    amsgrad: bool = Field(
        default=TORCH_DEFAULTS.amsgrad, description="Fixed when the session is created."
    )
    maximize: bool = TORCH_DEFAULTS.maximize
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    max_grad_norm: MaxGradNorm | None = None

    def config(
        self, groups: list[GroupSettings] | None = None, segments: list[int] | None = None
    ) -> AdamConfig:
        """As the optimiser's config, with ``groups`` and the tensors' ``segments``."""
        fields = self.model_dump(exclude={"schedule"})
        return AdamConfig(
            **fields,
            schedule=self.schedule.schedule(),
            param_groups=tuple(group.group() for group in groups or ()),
            segment_sizes=tuple(segments or ()),
        )

    @classmethod
    def of(cls, config: AdamConfig) -> OptimizerSettings:
        """The settings of a config, as the API shows them."""
        return cls.model_construct(
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
            weight_decay=config.weight_decay,
            decoupled_weight_decay=config.decoupled_weight_decay,
            amsgrad=config.amsgrad,
            maximize=config.maximize,
            schedule=ScheduleSettings.of(config.schedule),
            max_grad_norm=config.max_grad_norm,
        )


class OptimizerPatch(BaseModel):
    """Any subset of the optimizer settings except ``amsgrad``; null leaves a field as it is."""

    model_config = _STRICT

    lr: Lr | None = None
    betas: Betas | None = None
    eps: Eps | None = None
    weight_decay: WeightDecay | None = None
    decoupled_weight_decay: bool | None = None
    maximize: bool | None = None
    schedule: ScheduleSettings | None = None
    max_grad_norm: MaxGradNorm | None = Field(
        default=None, description="A number; null switches clipping off."
    )

    def changes(self) -> dict[str, Any]:
        """The fields given, as ``AdamConfig`` fields (``max_grad_norm: null`` included:
        it switches clipping off)."""
        changes = self.model_dump(exclude_none=True, exclude={"schedule"})
        if self.schedule is not None:
            changes["schedule"] = self.schedule.schedule()
        if "max_grad_norm" in self.model_fields_set:
            changes["max_grad_norm"] = self.max_grad_norm
        return changes


class ZerosInit(BaseModel):
    """All parameters zero."""

    model_config = _STRICT
    kind: Literal["zeros"]


class NormalInit(BaseModel):
    """Parameters drawn from N(mean, std²) with numpy's PCG64 generator."""

    model_config = _STRICT
    kind: Literal["normal"]
    # Bounded so that the draws are finite in float32 too (beyond 20 σ of 1e38).
    mean: Annotated[Finite, Field(ge=-1e38, le=1e38)] = 0.0
    std: Annotated[Finite, Field(ge=0, le=1e37)] = 1.0
    seed: NonNegativeWhole | None = Field(default=None, description="Random when omitted.")


class SessionCreate(SessionSettings):
    """Body of ``POST /v1/sessions``: exactly one of ``params`` and ``size``, the
    optimizer, and the session's settings (``SessionSettings``)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=False,
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["params"],
                    "not": {"anyOf": [{"required": ["size"]}, {"required": ["init"]}]},
                },
                {"required": ["size"], "not": {"required": ["params"]}},
            ],
            # float32 parameters must fit float32; float64's are any finite number.
            "if": {"properties": {"dtype": {"const": "float64"}}, "required": ["dtype"]},
            "else": {
                "properties": {
                    "params": {"items": {"minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}}
                }
            },
        },
    )

    # Absent, not null: a member that is given must hold a value (None is only the default).
    params: JsonVector | SkipJsonSchema[None] = Field(
        default=None, description="Initial parameters."
    )
    size: PositiveWhole | SkipJsonSchema[None] = Field(
        default=None, description="Number of parameters, initialised by `init`."
    )
    init: Annotated[ZerosInit | NormalInit, Field(discriminator="kind")] | SkipJsonSchema[None] = (
        Field(default=None, description="How to initialise `size` parameters (default zeros).")
    )
    dtype: Dtype = "float32"
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    param_groups: ParamGroups | SkipJsonSchema[None] = None
    segments: Segments | SkipJsonSchema[None] = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, values: Any) -> Any:
        return refuse_nulls(values, ("params", "size", "init", "param_groups", "segments"))

    @model_validator(mode="after")
    def _params_or_size(self) -> SessionCreate:
        if (self.params is None) == (self.size is None):
            raise ValueError("give exactly one of 'params' and 'size'")
        if self.params is not None and self.init is not None:
            raise ValueError("'init' goes with 'size', not with 'params'")
        size = self.size if self.params is None else len(self.params)
        if self.param_groups is not None:
            covered = sum(group.size for group in self.param_groups)
            if covered != size:
                raise ValueError(f"param_groups cover {covered} parameters; the session has {size}")
        if self.segments is not None:
            if sum(self.segments) != size:
                raise ValueError(
                    f"segments cover {sum(self.segments)} parameters; the session has {size}"
                )
            if self.param_groups is not None:
                ends = set(itertools.accumulate(self.segments))
                if not set(itertools.accumulate(g.size for g in self.param_groups)) <= ends:
                    raise ValueError("each param group must be whole segments (tensors), in order")
        return self

    def new_session(self) -> NewSession:
        """The request as the session domain takes it."""
        params = None
        if self.params is not None:
            params = negotiation.conform(self.params, size=None, dtype=self.dtype, field="params")
        init = self.init
        return NewSession(
            dtype=self.dtype,
            optimizer=self.optimizer.config(self.param_groups, self.segments),
            params=params,
            size=self.size,
            init=NormalInitSpec(init.mean, init.std, init.seed)
            if isinstance(init, NormalInit)
            else None,
            settings=settings_of(self),
        )


def settings_of(document: SessionSettings) -> SessionSettings:
    """The settings of a validated document that has them all (a create's)."""
    return SessionSettings.model_construct(
        **{name: getattr(document, name) for name in SessionSettings.names()}
    )


def _patch_field(name: str) -> tuple[Any, Any]:
    """A setting as PATCH takes it: optional; null back to its default where it may be
    null or empty, else not null (and no null in the schema)."""
    info = SessionSettings.model_fields[name]
    annotation: Any = info.annotation
    if info.metadata:
        annotation = Annotated[(annotation, *info.metadata)]
    none: Any = None if SessionSettings.nullable(name) else SkipJsonSchema[None]  # type: ignore[misc]
    described = info.description or ""
    if SessionSettings.nullable(name):
        described = f"{described} null: back to the default.".strip()
    return annotation | none, Field(default=None, description=described)


class _PatchBase(BaseModel):
    model_config = _STRICT

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, values: Any) -> Any:
        not_nullable = tuple(
            n for n in SessionSettings.changeable() if not SessionSettings.nullable(n)
        )
        return refuse_nulls(values, not_nullable)


_SessionPatchFields = create_model(  # type: ignore[call-overload]
    "_SessionPatchFields",
    __base__=_PatchBase,
    **{name: _patch_field(name) for name in SessionSettings.changeable()},
)


class SessionPatch(_SessionPatchFields):  # type: ignore[misc,valid-type]
    """Body of ``PATCH /v1/sessions/{id}``: the fields to change (every setting but
    those fixed at creation)."""

    optimizer: OptimizerPatch | None = None
    param_groups: GroupPatches | None = None

    def settings_changes(self) -> dict[str, Any]:
        """The settings given, by name; null as the setting's default."""
        given = self.model_fields_set & set(SessionSettings.changeable())
        return {
            name: SessionSettings.default_of(name)
            if getattr(self, name) is None
            else getattr(self, name)
            for name in given
        }


class StepSettingsIn(BaseModel):
    """The ``Adamhub-Optimizer`` header of a step: settings from this step on."""

    model_config = _STRICT

    optimizer: OptimizerPatch | None = None
    param_groups: GroupPatches | None = None

    def settings(self) -> StepSettings:
        """As the steps' domain takes them."""
        groups = self.param_groups
        return StepSettings(
            optimizer=self.optimizer.changes() if self.optimizer else {},
            param_groups=None
            if groups is None
            else [group.model_dump(exclude_none=True) for group in groups],
        )


class ParamGroupIn(GroupPatch):
    """Body of ``POST /v1/sessions/{id}/param_groups``: a group's initial parameters,
    the hyperparameters it sets (the session's otherwise), and its tensors' sizes."""

    params: JsonVector = Field(description="The new parameters' initial values.")
    segments: Segments | SkipJsonSchema[None] = Field(
        default=None, description="The sizes of the group's tensors (default: one)."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_null_vectors(cls, values: Any) -> Any:
        return refuse_nulls(values, ("params", "segments"))

    def new_group(self, dtype: str) -> NewGroup:
        """As the session domain takes it."""
        params = negotiation.conform(self.params, size=None, dtype=dtype, field="params")
        overrides = self.model_dump(exclude={"params", "segments"}, exclude_none=True)
        segments = None if self.segments is None else tuple(self.segments)
        return NewGroup(params, overrides, segments)


class ForkIn(BaseModel):
    """Body of ``POST /v1/sessions/{id}/fork`` (optional)."""

    model_config = _STRICT

    name: Name | None = Field(default=None, description="Default: the original's name.")
    tags: Tags | SkipJsonSchema[None] = Field(
        default=None, description="Default: the original's tags."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_null_tags(cls, values: Any) -> Any:
        return refuse_nulls(values, ("tags",))

    def settings_changes(self) -> dict[str, Any]:
        """The settings the fork changes."""
        return {
            name: getattr(self, name)
            for name in ("name", "tags")
            if getattr(self, name) is not None
        }


class RollbackIn(BaseModel):
    """Body of ``POST /v1/sessions/{id}/rollback``."""

    model_config = _STRICT

    t: StepCount = Field(description="The step to return to.")


class SessionOut(SessionSettings):
    """A session resource: its settings (``SessionSettings``) and the rest."""

    id: str = Field(description="`s_` and 32 hex digits.")
    size: int
    dtype: Dtype
    t: int = Field(description="Adam's step counter: 0 after creation, +1 per gradient.")
    optimizer: OptimizerSettings
    param_groups: list[dict[str, Any]] | None = Field(
        default=None, description="The param groups, when there are any."
    )
    segments: list[int] | None = Field(
        default=None, description="The sizes of the parameter tensors, when given."
    )
    created_at: str = Field(description="RFC 3339, UTC.")
    updated_at: str = Field(description="RFC 3339, UTC.")

    @classmethod
    def of(cls, record: SessionRecord) -> SessionOut:
        """The resource of a session record."""
        return cls.model_construct(
            id=record.id,
            size=record.size,
            dtype=record.dtype,
            t=record.t,
            optimizer=OptimizerSettings.of(record.optimizer),
            param_groups=[GroupSettings.of(g) for g in record.optimizer.param_groups] or None,
            segments=list(record.optimizer.segment_sizes) or None,
            created_at=record.created_at,
            updated_at=record.updated_at,
            **dict(record.settings),
        )


class SessionList(BaseModel):
    """A page of sessions, oldest first."""

    sessions: list[SessionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class ParamsOut(BaseModel):
    """Parameters at step ``t``."""

    t: int
    params: VectorOut


class ParamsIn(BaseModel):
    """Body of ``PUT /v1/sessions/{id}/params`` as JSON."""

    model_config = _STRICT
    params: JsonVector


class StepIn(BaseModel):
    """Body of ``POST /v1/sessions/{id}/step`` as JSON."""

    model_config = _STRICT
    gradient: JsonVector


class RoundPendingOut(BaseModel):
    """A contribution that is in, in a round still open after the wait (202)."""

    t: int = Field(description="The session's t: the round's base step.")
    round: int = Field(description="The step the round will produce (t + 1).")
    contributions: int = Field(description="Contributions the round holds.")
    needed: int = Field(
        description="What it still needs to close: contributions, or samples with "
        "target_samples (it may also close at its timeout)."
    )


class HistoryOut(BaseModel):
    """Points of a session's history, oldest first."""

    points: list[dict[str, Any]] = Field(
        description='Each `{"t", "time" (Unix seconds), "lr", "grad_norm", "update_norm", '
        '"loss", "staleness", "worker"}`; null where unknown.'
    )
    refusals: list[dict[str, Any]] = Field(
        default_factory=list,
        description='Gradients refused by screening, oldest first: each `{"time", "worker", '
        '"reason" ("outlier" or "non_finite"), "norm", "bound", "quarantined_until"}`.',
    )
    quarantined: dict[str, float] = Field(
        default_factory=dict,
        description="The workers in quarantine now, and when it ends (Unix seconds).",
    )


class StepOut(BaseModel):
    """Result of a step: ``params`` is left out with ``?return=none``."""

    t: int = Field(description="The step of the parameters returned (the newest).")
    applied_t: int = Field(description="The step this gradient produced.")
    params: VectorOut | None = None


EVERY_ACTION: tuple[Action] = ("*",)
Tenant = Annotated[str, Field(pattern=TENANT_PATTERN.pattern, description="A tenant's name.")]
SessionScope = Annotated[str, Field(pattern=f"^(\\*|{SESSION_ID_PATTERN.pattern.strip('^$')})$")]


def _text_only(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("a time is an RFC 3339 string, such as 2027-01-01T00:00:00Z")
    return value


class KeyCreate(BaseModel):
    """Body of ``POST /v1/keys``."""

    model_config = _STRICT

    tenant: Tenant | None = Field(default=None, description="Default: the caller's tenant.")
    actions: list[Action] = Field(default_factory=lambda: list(EVERY_ACTION), min_length=1)
    sessions: list[SessionScope] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        description='`["*"]`: every session of the tenant; or a list of session ids.',
    )
    expires_at: Annotated[AwareDatetime, Strict(False), BeforeValidator(_text_only)] | None = Field(
        default=None, description="RFC 3339 with a time zone; null: never."
    )
    description: Annotated[str, Field(max_length=1024)] | None = None


class KeyOut(BaseModel):
    """An API key (never its secret)."""

    id: str = Field(description="`k_` and 24 hex digits.")
    tenant: str
    actions: list[str]
    sessions: list[str]
    expires_at: str | None
    description: str | None
    created_at: str

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        """The resource of a key."""
        return cls.model_construct(
            id=key.id,
            tenant=key.tenant,
            actions=list(key.actions),
            sessions=list(key.sessions),
            expires_at=key.expires_at,
            description=key.description,
            created_at=key.created_at,
        )


class KeyCreated(KeyOut):
    """A new API key, with its secret: shown only in this answer."""

    key: str = Field(description="The secret to send as `Authorization: Bearer <key>`.")

    @classmethod
    def with_secret(cls, key: ApiKey, secret: str) -> KeyCreated:
        """The resource of a new key and its secret."""
        return cls.model_construct(**KeyOut.of(key).model_dump(), key=secret)


class KeyList(BaseModel):
    """The keys the caller manages, oldest first."""

    keys: list[KeyOut]


class StoreHealth(BaseModel):
    """The store as the readiness probe found it."""

    mode: Literal["standalone", "cluster"] = Field(
        description="How the store is deployed: one Redis, or a Redis Cluster "
        "(ADAMHUB_REDIS_CLUSTER)."
    )
    primaries: int = Field(description="The primaries the service reaches.")
    replicas: int = Field(description="The replicas of those primaries.")
    replica_acks: int = Field(
        description="How many replicas confirm each write before it is acknowledged "
        "(ADAMHUB_REPLICA_ACKS)."
    )


class Health(BaseModel):
    """The answer of the health and readiness probes."""

    status: Literal["ok", "ready"]
    store: StoreHealth | None = Field(default=None, description="The store (readiness only).")


class Problem(BaseModel):
    """An RFC 9457 problem document; extra members vary by ``type``."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="A stable URI per kind of error.")
    title: str
    status: int
    detail: str = Field(description="A sentence for people.")
    instance: str | None = Field(default=None, description="The request path.")
    request_id: str | None = Field(
        default=None, description="The request's X-Request-Id (sent, or made), as logged."
    )


def render(model: BaseModel, *, exclude_none: bool = False) -> bytes:
    """A response model as JSON bytes (numpy vectors written by orjson, without copies)."""
    return orjson.dumps(
        model.model_dump(exclude_none=exclude_none), option=orjson.OPT_SERIALIZE_NUMPY
    )
