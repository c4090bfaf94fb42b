"""What is answered before routing: the Host allow-list and OPTIONS."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adamhub_service import errors
from adamhub_service.api.problems import problem_response


def host_name(host_header: str) -> str:
    """The name of a Host header, without its port (``[::1]:8000`` → ``::1``)."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def allow_table(document: dict[str, Any]) -> list[tuple[re.Pattern[str], str]]:
    """Each documented path as a pattern, with every method it takes (the framework
    would name only those of the first route that matches a path)."""
    table = []
    # Literal paths first: /v1/sessions/import before /v1/sessions/{session_id}.
    paths = sorted(document.get("paths", {}).items(), key=lambda path: path[0].count("{"))
    for template, item in paths:
        methods = {method.upper() for method in item if method != "parameters"}
        if "GET" in methods:
            methods.add("HEAD")
        pattern = re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$")
        table.append((pattern, ", ".join(sorted(methods | {"OPTIONS"}))))
    return table


class FrontDoor:
    """Refuses a Host not in ``allowed_hosts`` (against DNS rebinding of a local
    service); answers OPTIONS, and 405s, with every method the path takes."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: list[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self._allow: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.allowed is not None and "*" not in self.allowed:
            raw = next((value for name, value in scope["headers"] if name == b"host"), b"")
            host = host_name(raw.decode("latin-1")).lower()
            if host not in self.allowed:
                error = errors.HostNotAllowed(
                    f"this service does not answer to Host {host!r}; see ADAMHUB_ALLOWED_HOSTS"
                )
                await problem_response(error, Request(scope))(scope, receive, send)
                return
        if scope["method"] == "OPTIONS":
            allow = self._allowed_methods(scope)
            if allow is not None:
                await Response(status_code=204, headers={"Allow": allow})(scope, receive, send)
                return

        async def send_with_allow(message: Message) -> None:
            # Only a 405 is rewritten: the framework names the methods of one route.
            if message["type"] == "http.response.start" and message["status"] == 405:
                allow = self._allowed_methods(scope)
                if allow is not None:
                    headers = [(k, v) for k, v in message["headers"] if k.lower() != b"allow"]
                    message = {**message, "headers": [*headers, (b"allow", allow.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_allow)

    def _allowed_methods(self, scope: Scope) -> str | None:
        if self._allow is None:
            self._allow = allow_table(scope["app"].openapi())
        path = scope["path"]
        return next((allow for pattern, allow in self._allow if pattern.match(path)), None)
