"""Rendering every error as ``application/problem+json`` (RFC 9457), in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from adamhub_service import errors
from adamhub_service.codec import PROBLEM_JSON, dump_json

logger = logging.getLogger("adamhub_service")

_BY_STATUS: dict[int, type[errors.AdamhubError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    422: errors.Unprocessable,
}


def problem_response(error: errors.AdamhubError, request: Request) -> Response:
    """The problem+json response of ``error``."""
    return Response(
        dump_json(error.problem(instance=request.url.path)),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=error.headers,
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Route every exception the app can raise to ``problem_response``."""

    async def domain_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.AdamhubError)
        return problem_response(exc, request)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem_response(validation_problem(exc.errors()), request)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = _BY_STATUS.get(exc.status_code, errors.BadRequest)
        return problem_response(kind(str(exc.detail), headers=dict(exc.headers or {})), request)

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            errors.AdamhubError("the service failed unexpectedly; nothing was changed"),
            request,
        )

    app.add_exception_handler(errors.AdamhubError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


def validation_problem(details: Any) -> errors.InvalidHyperparameters:
    """A 422 from pydantic's error list, keeping each error's location and message."""
    items = [
        {"loc": [str(part) for part in item.get("loc", ())], "msg": item.get("msg", "")}
        for item in details
    ]
    summary = "; ".join(
        f"{'.'.join(part for part in item['loc'] if part != 'body') or 'body'}: {item['msg']}"
        for item in items
    )
    return errors.InvalidHyperparameters(f"invalid request: {summary}", errors=items)
