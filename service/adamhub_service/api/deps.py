"""What request handlers depend on: the services, built once by the app's lifespan."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request

from adamhub_service.config import Settings
from adamhub_service.model.stored import StoreStatus
from adamhub_service.observability.metrics import Metrics
from adamhub_service.sessions.budget import InflightBudget
from adamhub_service.sessions.service import SessionService
from adamhub_service.steps.service import StepService
from adamhub_service.tenancy.api_keys import KeyService
from adamhub_service.tenancy.limits import RateLimiter


@dataclass(frozen=True, slots=True)
class Services:
    """The app's services and settings (no store: routes call the domain)."""

    settings: Settings
    sessions: SessionService
    steps: StepService
    metrics: Metrics
    keys: KeyService
    limiter: RateLimiter
    budget: InflightBudget
    # Raises StoreUnavailable unless the store answers (the readiness probe).
    ready: Callable[[], Awaitable[StoreStatus]]


async def services(request: Request) -> Services:
    """The services of the app serving ``request``."""
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]
SessionId = Annotated[str, Path(description="A session id: `s_` and 32 hex digits.")]
