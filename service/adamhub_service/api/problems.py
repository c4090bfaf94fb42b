"""Every error as ``application/problem+json`` (RFC 9457): one table of statuses, one
handler for the domain's errors, and the few framework errors mapped onto them."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from adamhub_service import errors
from adamhub_service.api import headers
from adamhub_service.api.negotiation import PROBLEM_JSON, dump_json
from adamhub_service.observability.logs import current_request_id

logger = logging.getLogger("adamhub_service")

# The HTTP status of each kind of domain error; a subclass takes its nearest base's.
STATUS: dict[type[errors.AdamhubError], int] = {
    errors.AdamhubError: 500,
    errors.BadRequest: 400,
    errors.NotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.StepConflict: 409,
    errors.HistoryUnavailable: 409,
    errors.StaleGradient: 409,
    errors.SizeChanged: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.Unprocessable: 422,
    errors.StoreUnavailable: 503,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.RequestTimeout: 408,
    errors.RateLimited: 429,
    errors.HeadersTooLarge: 431,
    errors.OutcomeUnknown: 503,
    errors.Overloaded: 503,
}

_BY_STATUS: dict[int, type[errors.AdamhubError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    422: errors.Unprocessable,
}


def status_of(error: errors.AdamhubError) -> int:
    """The HTTP status of a domain error."""
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def problem_document(error: errors.AdamhubError, instance: str | None = None) -> dict[str, Any]:
    """The RFC 9457 problem document of ``error``."""
    body: dict[str, Any] = {
        "type": error.type_uri,
        "title": error.title,
        "status": status_of(error),
        "detail": error.detail,
    }
    if instance is not None:
        body["instance"] = instance
    request_id = current_request_id.get()
    if request_id is not None:
        body["request_id"] = request_id
    body.update(error.extra)
    return body


def problem_response(
    error: errors.AdamhubError, request: Request, extra_headers: dict[str, str] | None = None
) -> Response:
    """The problem+json response of ``error``."""
    all_headers = dict(extra_headers or {})
    if error.retry_after is not None:
        all_headers[headers.RETRY_AFTER] = str(error.retry_after)
    if isinstance(error, errors.Unauthorized):
        all_headers["WWW-Authenticate"] = 'Bearer realm="adamhub"'
    if isinstance(error, errors.RateLimited):
        # draft-ietf-httpapi-ratelimit-headers: the policy, and where the caller stands.
        limit, window = error.extra["limit"], error.extra["window_seconds"]
        all_headers[headers.RATE_LIMIT_POLICY] = f'"per-key";q={limit};w={window}'
        all_headers[headers.RATE_LIMIT] = (
            f'"per-key";r={error.extra["remaining"]};t={error.retry_after or 1}'
        )
    if isinstance(
        error,
        errors.RequestTimeout | errors.HeadersTooLarge | errors.PayloadTooLarge | errors.WrongSize,
    ):
        # The body may be unread: do not keep reading (or waiting for) the rest of it.
        all_headers["Connection"] = "close"
    return Response(
        dump_json(problem_document(error, instance=request.url.path)),
        status_code=status_of(error),
        media_type=PROBLEM_JSON,
        headers=all_headers,
    )


def unexpected_problem(request: Request) -> Response:
    """The 500 of an exception no handler knows (logged here, with its traceback: call
    it from the ``except`` block)."""
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        errors.AdamhubError("the service failed unexpectedly; nothing was changed"), request
    )


def validation_problem(details: Any) -> errors.ValidationFailed:
    """A 422 from pydantic's error list, keeping each error's location and message."""
    items = [
        {"loc": [str(part) for part in item.get("loc", ())], "msg": item.get("msg", "")}
        for item in details
    ]
    summary = "; ".join(
        f"{'.'.join(part for part in item['loc'] if part != 'body') or 'body'}: {item['msg']}"
        for item in items
    )
    return errors.ValidationFailed(f"invalid request: {summary}", errors=items)


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
        return problem_response(
            kind(str(exc.detail)), request, extra_headers=dict(exc.headers or {})
        )

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        return unexpected_problem(request)

    app.add_exception_handler(errors.AdamhubError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
