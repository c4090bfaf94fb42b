"""Logs: one access line per request, text or JSON lines, with a request id.

Every request gets an id: its ``X-Request-Id`` when it sends a sensible one, else a
fresh one. The id is echoed in the answer's ``X-Request-Id``, put in problem documents
(``request_id``), and logged with the request's line: method, route, status,
duration, session, t.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import sys
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_PATTERN = re.compile(r"^[\x21-\x7e]{1,128}$")
_ACCESS_FIELDS = ("method", "route", "status", "duration_ms", "session", "t", "request_id")
access_logger = logging.getLogger("adamhub.access")
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)


def new_request_id() -> str:
    """A fresh request id."""
    return f"req_{secrets.token_hex(8)}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _ACCESS_FIELDS:
            if hasattr(record, field):
                line[field] = getattr(record, field)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(level: str, log_format: str) -> None:
    """Log to stderr at ``level``, as ``text`` or ``json`` lines (every process of the
    service calls it: uvicorn's workers are spawned, and inherit no handler)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(levelname)s: %(message)s")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class AccessLogMiddleware:
    """Gives every request its id and logs one line when it is answered (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode(
            "latin-1"
        )
        request_id = given if _REQUEST_ID_PATTERN.fullmatch(given) else new_request_id()
        token = current_request_id.set(request_id)
        start = time.perf_counter()
        answer: dict[str, Any] = {"status": 500, "t": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"adamhub-step":
                        answer["t"] = int(value)
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", ()),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
            if access_logger.isEnabledFor(logging.INFO):
                route: Any = scope.get("route")
                fields = {
                    "method": scope["method"],
                    "route": getattr(route, "path", scope["path"]),
                    "status": answer["status"],
                    "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                    "session": scope.get("path_params", {}).get("session_id"),
                    "t": answer["t"],
                    "request_id": request_id,
                }
                access_logger.info(
                    "%s %s %s %.1f ms session=%s t=%s request_id=%s",
                    *("-" if fields[name] is None else fields[name] for name in _ACCESS_FIELDS),
                    extra=fields,
                )
