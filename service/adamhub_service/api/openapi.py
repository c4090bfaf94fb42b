"""The parts of the OpenAPI document that FastAPI cannot infer.

Bodies are read by the routes themselves (binary or JSON, streamed, with problems that
name the bad element), so their schemas, the error responses and the response headers
are declared here and their models added to the components in ``openapi_document``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from adamhub_service.api import headers
from adamhub_service.api.negotiation import BINARY, JSON, PROBLEM_JSON
from adamhub_service.api.schemas import (
    ForkIn,
    KeyCreate,
    ParamGroupIn,
    ParamsIn,
    Problem,
    RollbackIn,
    SessionCreate,
    SessionPatch,
    StepIn,
)

REF = "#/components/schemas/{model}"
# Documented request bodies, registered as components by ``openapi_document``.
BODY_MODELS: tuple[type[BaseModel], ...] = (
    SessionCreate,
    SessionPatch,
    RollbackIn,
    ForkIn,
    ParamsIn,
    ParamGroupIn,
    StepIn,
    KeyCreate,
    Problem,
)

_DESCRIPTIONS = {
    400: "The request cannot be read, or its Host is not one this service answers to.",
    401: "No API key, or one that is unknown, expired or revoked (`WWW-Authenticate`).",
    403: "The key does not grant this action; the tenant is at a quota; or, without a "
    "master key, the client is not on this machine (protected mode).",
    408: "The body stalled; the connection is closed.",
    429: "The key is over its rate limit; nothing was done. Retry after `Retry-After`.",
    404: "No such session (or not yours).",
    405: "The resource does not take this method.",
    409: "Concurrent updates kept winning; nothing was changed. Retry after `Retry-After`.",
    413: "The body is over the service's limit.",
    415: "A `Content-Type` or `Adamhub-Dtype` the service does not take.",
    422: "Invalid content: every problem is described; nothing was changed.",
    500: "The service failed unexpectedly; nothing was changed.",
    503: "`store-unavailable`: nothing was changed; `outcome-unknown`: a write may have "
    "been applied (retry with the same Idempotency-Key, or read the session); "
    "`overloaded`: too much in flight. Retry after `Retry-After`.",
}
_RETRY_AFTER = {
    headers.RETRY_AFTER: {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    }
}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}}}
_RATE_LIMIT = {
    headers.RATE_LIMIT_POLICY: {
        "description": "The key's limit (draft-ietf-httpapi-ratelimit-headers).",
        "schema": {"type": "string"},
    },
    headers.RATE_LIMIT: {"description": "Where the key stands.", "schema": {"type": "string"}},
}
REPLAYED_HEADERS = {
    headers.REPLAYED: {
        "description": "`true` when the answer replays an earlier request with this key.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
STEP_HEADERS = {
    headers.STEP: {
        "description": "`t` of the parameters returned (the newest).",
        "schema": {"type": "integer", "minimum": 0},
    },
    "ETag": {"description": "The version of the parameters.", "schema": {"type": "string"}},
    headers.DTYPE: {
        "description": "A binary answer's element type (`Adamhub-Accept-Dtype`, else the "
        "session's).",
        "schema": {"type": "string", "enum": ["bfloat16", "float16", "float32", "float64"]},
    },
}
APPLIED_HEADERS = {
    headers.APPLIED_STEP: {
        "description": "The step this gradient produced.",
        "schema": {"type": "integer", "minimum": 1},
    },
    **REPLAYED_HEADERS,
}
LOCATION_HEADER = {
    "Location": {"description": "The new resource's URL.", "schema": {"type": "string"}}
}
BINARY_VECTOR = {
    "schema": {
        "type": "string",
        "format": "binary",
        "description": "Raw little-endian vector; element type from `Adamhub-Dtype` "
        "(default the session's dtype).",
    }
}


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A JSON Schema reference to a component."""
    return {"$ref": REF.format(model=model.__name__)}


def problems(*statuses: int, caller: bool = True) -> dict[int | str, dict[str, Any]]:
    """Problem responses for ``statuses``; 400, 500 and 503 are always possible, and 401,
    403 and 429 for a route with a ``caller``."""
    always = {400, 500, 503} | ({401, 403, 429} if caller else set())
    documented: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, *always}):
        response: dict[str, Any] = {
            "description": _DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": ref(Problem)}},
        }
        if status in (409, 429, 503):
            response["headers"] = dict(_RETRY_AFTER)
        if status == 401:
            response["headers"] = _WWW_AUTHENTICATE
        if status == 429:
            response["headers"].update(_RATE_LIMIT)
        documented[status] = response
    return documented


def parameter(
    name: str, where: str, schema: dict[str, Any], description: str | None = None
) -> dict[str, Any]:
    """An operation parameter, for routes that read their request themselves."""
    doc: dict[str, Any] = {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
    }
    if description:
        doc["description"] = description
    return doc


SESSION_ID_PARAMETER = parameter(
    "session_id", "path", {"type": "string"}, "A session id: `s_` and 32 hex digits."
)
DTYPE_PARAMETER_DESCRIPTION = (
    "Element type of a binary body (default: the session's dtype); `bfloat16` and `float16` "
    "widen exactly to the session's."
)
IDEMPOTENCY_KEY_DESCRIPTION = (
    "1 to 255 visible ASCII characters: a retry with the same key and the same body is "
    "applied once."
)
IDEMPOTENCY_KEY_PATTERN = "^[!-~]{1,255}$"


def json_body(model: type[BaseModel], *, binary: bool = False) -> dict[str, Any]:
    """``openapi_extra`` for a required body of ``model`` (or a binary vector)."""
    content: dict[str, Any] = {JSON: {"schema": ref(model)}}
    if binary:
        content[BINARY] = BINARY_VECTOR
    return {"requestBody": {"required": True, "content": content}}


def openapi_document(app: FastAPI, *, max_size: int) -> dict[str, Any]:
    """The app's OpenAPI document, with the body models and this service's size limit."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    _, definitions = models_json_schema(
        [(model, "validation") for model in BODY_MODELS], ref_template=REF
    )
    _drop_framework_validation_errors(document)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in definitions.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    schemas["SessionCreate"]["properties"]["size"]["maximum"] = max_size
    _drop_null_defaults(schemas)
    app.openapi_schema = document
    return document


def _drop_framework_validation_errors(document: dict[str, Any]) -> None:
    """Remove the 422 FastAPI documents on its own: its body is not what the service sends
    (every error is a problem document), and the routes that can answer 422 say so."""
    framework_ref = "#/components/schemas/HTTPValidationError"
    for item in document.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {})
            content = responses.get("422", {}).get("content", {})
            if content.get(JSON, {}).get("schema", {}).get("$ref") == framework_ref:
                del responses["422"]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _drop_null_defaults(node: Any) -> None:
    """Remove ``"default": null`` where null is not a value the member may hold (a member
    that may be left out, not sent as null): the document would contradict itself."""
    if isinstance(node, dict):
        types = node.get("type")
        allows_null = types == "null" or (isinstance(types, list) and "null" in types)
        allows_null |= any(option.get("type") == "null" for option in node.get("anyOf", []))
        if "default" in node and node["default"] is None and not allows_null:
            del node["default"]
        for value in node.values():
            _drop_null_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_null_defaults(value)
