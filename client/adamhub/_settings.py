"""A session's settings as the SDK sends and shows them: the SDK's own declaration of
the service's ``SessionSettings`` (a test holds the two equal)."""

from __future__ import annotations

from typing import Any, TypedDict, cast


class SessionSettings(TypedDict, total=False):
    """A session's settings besides its optimizer.

    ``name`` and ``metadata`` (free JSON) describe it; ``tags`` (up to 16, each 1–64 of
    ``A-Z a-z 0-9 . _ : -``) label it for ``list_sessions(tag=…)``; it keeps what rolling
    back to any of its last ``history_steps`` steps needs; with ``max_staleness``, a
    gradient computed more than that many steps behind is refused
    (``StaleGradientError``); ``rounds`` (``{"contributions": K}`` or
    ``{"target_samples": B}``, with ``timeout_seconds`` and ``min_contributions``;
    fixed at creation) makes each step the samples-weighted mean of a round's
    contributions, as DDP does; the points of the newest ``history_points`` steps are
    kept for charts; ``expires_after_idle_seconds`` deletes it once idle that long;
    ``screen`` (``{"max_norm_ratio": k, "window": W, "quarantine_after": N,
    "quarantine_seconds": S}``) refuses outlier gradients and quarantines the workers
    that keep sending them.
    """

    name: str | None
    metadata: dict[str, Any]
    tags: list[str]
    history_steps: int
    max_staleness: int | None
    rounds: dict[str, Any] | None
    history_points: int
    expires_after_idle_seconds: int | None
    screen: dict[str, Any] | None


# The service's defaults (a session resource always carries every setting).
DEFAULTS: dict[str, Any] = {
    "name": None,
    "metadata": {},
    "tags": [],
    "history_steps": 0,
    "max_staleness": None,
    "rounds": None,
    "history_points": 10_000,
    "expires_after_idle_seconds": None,
    "screen": None,
}
# Chosen at creation; never changed.
FIXED = frozenset({"rounds"})
SETTING_NAMES = tuple(SessionSettings.__annotations__)


class OptimizerChanges(TypedDict, total=False):
    """Optimizer settings a session's ``update`` (or a step's ``settings``) changes."""

    lr: float
    betas: tuple[float, float] | list[float]
    eps: float
    weight_decay: float
    decoupled_weight_decay: bool
    maximize: bool
    schedule: dict[str, Any]
    max_grad_norm: float | None


class SessionUpdate(SessionSettings, OptimizerChanges, total=False):
    """What ``Session.update`` takes: settings, optimizer fields, and the param groups'
    settings (one dict per group, in order)."""

    param_groups: list[dict[str, Any]]


def settings_of(resource: dict[str, Any]) -> SessionSettings:
    """The settings of a session resource (defaults for those an older service omits)."""
    settings: Any = {name: resource.get(name, DEFAULTS[name]) for name in SETTING_NAMES}
    return cast(SessionSettings, settings)


def update_body(changes: SessionUpdate) -> dict[str, Any]:
    """The PATCH body of ``changes``."""
    fixed = FIXED & changes.keys()
    if fixed:
        raise ValueError(f"{', '.join(sorted(fixed))} is fixed when a session is created")
    body: dict[str, Any] = {}
    optimizer: dict[str, Any] = {}
    for name, value in changes.items():
        if name in SETTING_NAMES or name == "param_groups":
            body[name] = value
        else:
            optimizer[name] = list(cast(tuple[float, float], value)) if name == "betas" else value
    if optimizer:
        body["optimizer"] = optimizer
    return body
