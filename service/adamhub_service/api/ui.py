"""``/ui``: the dashboard, from the package's own files (nothing from the internet)."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

# The page may only load and connect to this service.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def install_ui(app: FastAPI) -> None:
    """Serve the dashboard at ``/ui`` and its assets under ``/ui/static``."""
    static = resources.files("adamhub_service.ui") / "static"
    page = (static / "index.html").read_text()
    app.mount("/ui/static", StaticFiles(directory=str(static)), name="ui-assets")

    @app.get("/ui", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "Cache-Control": "no-cache",
            },
        )
