"""When a gradient is too old (or from a future the session never reached) to apply:
the one rule, and the one error, of plain steps and rounds."""

from __future__ import annotations

from adamhub_service import errors


def stale_gradient(base_step: int | None, t: int, why: str) -> errors.StaleGradient:
    """409 ``stale-gradient``: the gradient was computed at ``base_step``; the session
    (or its open round) is at ``t``; ``why`` it cannot be applied there."""
    return errors.StaleGradient(
        f"the gradient was computed at t={base_step}; {why}: fetch the parameters and "
        "compute it again",
        t=t,
    )


def staleness(
    base_step: int | None, t: int, max_staleness: int | None
) -> errors.StaleGradient | None:
    """Why a gradient computed at step ``base_step`` may not be applied at ``t``."""
    if base_step is None:
        return None
    if base_step > t:
        return stale_gradient(
            base_step, t, f"the session is at t={t} (rolled back or reset since?)"
        )
    if max_staleness is not None and t - base_step > max_staleness:
        return stale_gradient(
            base_step,
            t,
            f"that is {t - base_step} steps behind t={t}, and this session takes at most "
            f"{max_staleness}",
        )
    return None
