"""What request handlers depend on: the services, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request

from adamhub_service.api.budget import InflightBudget
from adamhub_service.config import Settings
from adamhub_service.observability.metrics import Metrics
from adamhub_service.sessions.service import SessionService
from adamhub_service.steps.rounds import RoundService
from adamhub_service.steps.service import StepService
from adamhub_service.storage.versions import SessionStore
from adamhub_service.tenancy.keys import KeyService
from adamhub_service.tenancy.limits import RateLimiter


@dataclass(frozen=True, slots=True)
class Services:
    """The app's services and settings."""

    settings: Settings
    store: SessionStore
    sessions: SessionService
    steps: StepService
    rounds: RoundService
    metrics: Metrics
    keys: KeyService
    limiter: RateLimiter
    budget: InflightBudget


async def services(request: Request) -> Services:
    """The services of the app serving ``request``."""
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]
SessionId = Annotated[str, Path(description="A session id: `s_` and 32 hex digits.")]
