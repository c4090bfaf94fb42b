"""What is answered before routing: the Host allow-list and OPTIONS."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from adamhub_service import errors
from adamhub_service.api.problems import problem_response


def host_name(host_header: str) -> str:
    """The name of a Host header, without its port (``[::1]:8000`` → ``::1``)."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class FrontDoor:
    """Refuses a Host not in ``allowed_hosts`` (against DNS rebinding of a local
    service) and answers OPTIONS with the methods the path really takes."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: list[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.allowed is not None and "*" not in self.allowed:
            host = host_name(request.headers.get("host", "")).lower()
            if host not in self.allowed:
                error = errors.HostNotAllowed(
                    f"this service does not answer to Host {host!r}; see ADAMHUB_ALLOWED_HOSTS"
                )
                await problem_response(error, request)(scope, receive, send)
                return
        if scope["method"] == "OPTIONS":
            await self._options(request)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _options(self, request: Request) -> Response:
        methods: set[str] = set()
        for route in request.app.router.routes:
            match, _ = route.matches({**request.scope, "method": "GET"})
            if match is not Match.NONE:
                methods |= getattr(route, "methods", None) or set()
        if not methods:
            return problem_response(errors.NotFound(f"there is no {request.url.path}"), request)
        allow = ", ".join(sorted(methods | {"OPTIONS"}))
        return Response(status_code=204, headers={"Allow": allow})
