"""The application factory: settings in, a ready FastAPI app out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from adamhub_service import __version__
from adamhub_service.cache import StateCache
from adamhub_service.codec import JSON, dump_json
from adamhub_service.metrics import Metrics, MetricsMiddleware
from adamhub_service.problems import install_problem_handlers
from adamhub_service.routes import Services, router
from adamhub_service.sessions import SessionService
from adamhub_service.settings import Settings
from adamhub_service.steps import StepService
from adamhub_service.store import RedisStore


def create_app(settings: Settings) -> FastAPI:
    """The service, keeping state in the Redis of ``settings.redis_url``."""
    if not settings.redis_url:
        raise ValueError("create_app needs settings.redis_url; `adamhub-service serve` sets it")
    redis_url = settings.redis_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = RedisStore.from_url(
            redis_url,
            timeout_seconds=settings.redis_timeout_seconds,
            max_connections=settings.redis_max_connections,
            pending_write_ttl_ms=int(settings.pending_write_ttl_seconds * 1000),
        )
        cache = StateCache(settings.cache_bytes)
        sessions = SessionService(store, cache, settings)
        metrics.cache_bytes.set_function(lambda: cache.nbytes)
        app.state.services = Services(settings, sessions, StepService(sessions, metrics))
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(
        title="adamhub",
        version=__version__,
        summary="Adam as a service: optimiser state in Redis, steps over HTTP.",
        lifespan=lifespan,
    )
    metrics = Metrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_problem_handlers(app)
    app.include_router(router)

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz() -> Response:
        return Response(dump_json({"status": "ok"}), media_type=JSON)

    @app.get("/readyz", tags=["operations"], summary="The store answers")
    async def readyz(request: Request) -> Response:
        services: Services = request.app.state.services
        await services.sessions.store.ping()
        return Response(dump_json({"status": "ready"}), media_type=JSON)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def create_app_from_env() -> FastAPI:
    """The app configured from ``ADAMHUB_*`` variables (uvicorn's factory entry)."""
    return create_app(Settings())
