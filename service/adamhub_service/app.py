"""The application factory: settings in, a ready FastAPI app out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from adamhub_service import __version__
from adamhub_service.api import (
    api_keys,
    checkpoints,
    history,
    operations,
    params,
    sessions,
    steps,
)
from adamhub_service.api.deps import Services
from adamhub_service.api.middleware import FrontDoor
from adamhub_service.api.openapi import openapi_document
from adamhub_service.api.problems import install_problem_handlers
from adamhub_service.api.step_lane import StepLane
from adamhub_service.api.ui import install_ui
from adamhub_service.config import ServerOptions, Settings
from adamhub_service.observability.logs import AccessLogMiddleware, configure_logging
from adamhub_service.observability.metrics import Metrics, MetricsMiddleware
from adamhub_service.sessions.budget import InflightBudget
from adamhub_service.sessions.janitor import Janitor
from adamhub_service.sessions.service import SessionLimits, SessionService
from adamhub_service.steps.rounds import RoundService
from adamhub_service.steps.screening import Screening
from adamhub_service.steps.service import StepService
from adamhub_service.storage.acks import ReplicaAcks
from adamhub_service.storage.connection import Storage, StorageOptions, connect
from adamhub_service.storage.migrations import move_old_keys_once_reachable
from adamhub_service.tenancy.api_keys import KeyService
from adamhub_service.tenancy.limits import RateLimiter


class AdamhubApp(FastAPI):
    """The service's app: its hottest route is served by a ``StepLane`` when it has one
    (``create_app`` gives it one)."""

    lane: StepLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lane
        if lane is not None and lane.serves(scope):
            await lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    """The service, keeping state in the Redis of ``settings.redis_url``."""
    if not settings.redis_url:
        raise ValueError("create_app needs settings.redis_url; `adamhub-service serve` sets it")
    redis_url = settings.redis_url
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = connect(
            redis_url,
            timeout_seconds=settings.redis_timeout_seconds,
            max_connections=settings.redis_max_connections,
            cluster=settings.redis_cluster,
        )
        # Before serving, unless the store is down: then as soon as it answers. (A
        # cluster never held an earlier version's names.)
        migration = asyncio.create_task(
            asyncio.sleep(0) if settings.redis_cluster else move_old_keys_once_reachable(client)
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(migration), settings.redis_timeout_seconds)
        storage = Storage.over(
            client,
            StorageOptions(
                pending_write_ttl_ms=int(settings.pending_write_ttl_seconds * 1000),
                round_trip_bytes=settings.round_trip_bytes,
                cache_bytes=settings.cache_bytes,
                commit_attempts=settings.commit_attempts,
                snapshot_bytes=settings.snapshot_bytes,
                acks=ReplicaAcks(
                    settings.replica_acks, int(settings.replica_ack_timeout_seconds * 1000)
                ),
            ),
            metrics,
        )
        sessions = storage.sessions
        metrics.watch_cache(lambda: sessions.cached_bytes)
        budget = InflightBudget(
            settings.max_inflight_bytes, wait_seconds=settings.overload_wait_seconds
        )
        screening = Screening(storage.screening, metrics)
        rounds = RoundService(
            sessions,
            storage.rounds,
            metrics,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
        )
        app.state.services = Services(
            settings=settings,
            sessions=SessionService(
                sessions,
                storage.tenants,
                storage.create_keys,
                storage.expiry,
                screening=storage.screening,
                chunk_elements=settings.chunk_elements,
                spread_chunks=settings.redis_cluster and settings.spread_chunks,
                limits=SessionLimits(
                    max_size=settings.max_size,
                    tenant_max_sessions=settings.tenant_max_sessions,
                    tenant_max_parameters=settings.tenant_max_parameters,
                ),
                idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            ),
            steps=StepService(
                sessions,
                metrics,
                idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
                budget=budget,
                rounds=rounds,
                screening=screening,
            ),
            metrics=metrics,
            keys=KeyService(storage.api_keys, master_key=settings.master_key),
            limiter=RateLimiter(
                storage.rates, metrics, rate=settings.rate_limit, burst=settings.rate_limit_burst
            ),
            budget=budget,
            ready=storage.status,
        )
        app.state.janitor = Janitor(
            sessions, storage.expiry, storage.tenants, every_seconds=settings.janitor_seconds
        )
        janitor = asyncio.create_task(app.state.janitor.run())
        # Spread sessions' chunks that a dead process left (storage/garbage.py).
        collector = asyncio.create_task(
            storage.chunk_garbage.run(settings.janitor_seconds)
            if settings.redis_cluster
            else asyncio.sleep(0)
        )
        try:
            yield
        finally:
            migration.cancel()
            janitor.cancel()
            collector.cancel()
            for task in (migration, janitor, collector):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await storage.close()
            metrics.process_stopped()

    app = AdamhubApp(
        title="adamhub",
        version=__version__,
        summary="Adam as a service: optimiser state in Redis, steps over HTTP.",
        lifespan=lifespan,
        docs_url=None,
        # Operation ids are the handlers' names: generated clients get create_session().
        generate_unique_id_function=lambda route: route.name,
        redoc_url=None,
    )
    # The service's own middleware, innermost first: around every route, and around the
    # step lane.
    middleware: list[tuple[Any, dict[str, Any]]] = [
        (FrontDoor, {"allowed_hosts": settings.allowed_hosts}),
        (MetricsMiddleware, {"metrics": metrics}),
        (AccessLogMiddleware, {}),
    ]
    for layer, options in middleware:
        app.add_middleware(layer, **options)

    def wrapped(endpoint: ASGIApp) -> ASGIApp:
        for layer, options in middleware:
            endpoint = layer(endpoint, **options)
        return endpoint

    install_problem_handlers(app)
    # The hottest route first: a request is matched against the routes in order.
    for router in (
        steps.router,
        sessions.router,
        params.router,
        history.router,
        checkpoints.router,
        api_keys.router,
        operations.router,
    ):
        app.include_router(router)
    operations.install_docs(app)
    install_ui(app)

    def openapi() -> dict[str, Any]:
        return openapi_document(app, max_size=settings.max_size)

    app.openapi = openapi  # type: ignore[method-assign]
    app.lane = StepLane(app, wrapped)
    return app


def create_app_from_env() -> FastAPI:
    """The app configured from ``ADAMHUB_*`` variables (uvicorn's factory entry)."""
    options = ServerOptions()
    configure_logging(options.log_level, options.log_format)
    return create_app(Settings())
