"""The hottest route, ``POST /v1/sessions/{id}/step``, served past the framework.

A round of K workers is K small requests, and for a small gradient the framework's
request pipeline — its exception and exit-stack layers, the router's matching, the
route's request handler — cost a fifth of the service's CPU (a 16 × 1k round: 6.5 →
5.2 ms). The lane gives the step request what the route needs: the service's own
middleware (access log, metrics, Host check, the same instances' classes and order as
every other route), the endpoint, and the same problem handlers. Everything else goes
through the app as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from adamhub_service import errors
from adamhub_service.api import steps
from adamhub_service.api.problems import problem_response, unexpected_problem

# The route's path, as the router would match it (a session id is any segment).
_STEP_PATH = re.compile(r"^/v1/sessions/([^/]+)/step$")


class StepLane:
    """Serves the step route inside ``wrap`` (the service's middleware); ``serves``
    says which requests are its."""

    def __init__(self, app: FastAPI, wrap: Callable[[ASGIApp], ASGIApp]) -> None:
        self._app = app
        self._route = next(
            route
            for route in steps.router.routes
            if isinstance(route, APIRoute) and route.endpoint is steps.step
        )
        self._served = wrap(self._endpoint)

    def serves(self, scope: Scope) -> bool:
        """Whether the request is a step (a POST to its path, with no root path for the
        framework to strip)."""
        return (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and _STEP_PATH.match(scope["path"]) is not None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _STEP_PATH.match(scope["path"])
        assert match is not None, "a request the lane serves"
        # What routing would have put in the scope: the app, the route, its parameters.
        scope["app"] = self._app
        scope["route"] = self._route
        scope["endpoint"] = steps.step
        scope["path_params"] = {"session_id": match.group(1)}
        await self._served(scope, receive, send)

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await steps.step(request)
        except errors.AdamhubError as exc:
            response = problem_response(exc, request)
        except Exception:
            response = unexpected_problem(request)
        await response(scope, receive, send)
