"""Health, readiness, metrics, and the API's own documentation page."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from adamhub_service.api import openapi
from adamhub_service.api.auth import PrincipalDep
from adamhub_service.api.deps import ServicesDep
from adamhub_service.api.negotiation import JSON
from adamhub_service.api.schemas import Health, StoreHealth, render

router = APIRouter(tags=["operations"])

DOCS_ASSETS = "/docs/assets"


@router.get("/healthz", response_model=Health, summary="The process is up (no store call)")
async def healthz() -> Response:
    """Always 200 while the process runs."""
    return Response(render(Health(status="ok"), exclude_none=True), media_type=JSON)


@router.get(
    "/readyz",
    response_model=Health,
    responses=openapi.problems(caller=False),
    summary="The store answers",
)
async def readyz(services: ServicesDep) -> Response:
    """200 when the store answers (with how it is deployed), else 503."""
    store = await services.ready()
    health = Health(
        status="ready",
        store=StoreHealth(
            mode=store.mode,
            primaries=store.primaries,
            replicas=store.replicas,
            replica_acks=store.replica_acks,
        ),
    )
    return Response(render(health), media_type=JSON)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **openapi.problems(),
    },
    summary="Prometheus metrics",
)
async def prometheus_metrics(services: ServicesDep, caller: PrincipalDep) -> Response:
    """The Prometheus text exposition of this process's metrics (`metrics.read`)."""
    caller.require("metrics.read")
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` from assets shipped in a Python package, not a CDN."""
    assets = resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )
