"""The SDK's own declarations held equal to the service's: the session settings, the
problem types and their statuses, the header names; and retries decided by type."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from adamhub import _errors, _headers, _settings
from adamhub._base_client import BaseClient, RequestSpec
from adamhub_service import errors
from adamhub_service.api.problems import STATUS
from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.model.settings import SessionSettings


def service_problem_types() -> dict[str, int]:
    """Every problem type the service can send, with its status."""
    found: dict[str, int] = {}
    pending: list[type[errors.AdamhubError]] = [errors.AdamhubError]
    while pending:
        kind = pending.pop()
        pending += kind.__subclasses__()
        found[kind.slug] = next(STATUS[k] for k in kind.__mro__ if k in STATUS)
    return found


def test_the_sdk_declares_the_services_session_settings() -> None:
    assert SessionSettings.names() == _settings.SETTING_NAMES
    assert frozenset(SessionSettings.FIXED) == _settings.FIXED
    defaults = {name: SessionSettings.default_of(name) for name in SessionSettings.names()}
    # As the resource carries them (JSON).
    assert orjson.loads(orjson.dumps(defaults)) == _settings.DEFAULTS


def test_every_problem_type_has_its_class_with_the_services_status() -> None:
    sent = service_problem_types()
    assert set(_errors.PROBLEM_TYPES) == set(sent)
    for slug, status in sent.items():
        kind = _errors.PROBLEM_TYPES[slug]
        assert kind.status == status, slug
        assert issubclass(kind, _errors.BY_STATUS[status]), slug


def answer(status: int, slug: str | None) -> httpx.Response:
    document = {} if slug is None else {"type": f"{errors.ERROR_TYPE_BASE}{slug}"}
    return httpx.Response(status, json=document, request=httpx.Request("POST", "http://x/"))


@pytest.mark.parametrize(
    ("status", "slug", "idempotent", "unsent"),
    [
        (503, "outcome-unknown", True, False),  # never "nothing changed"
        (503, "store-unavailable", True, True),
        (503, "overloaded", True, True),
        (429, "rate-limited", True, True),
        (409, "step-conflict", True, True),
        (409, "stale-gradient", False, False),
        (409, "history-unavailable", False, False),
        (408, "request-timeout", True, False),
        (422, "wrong-size", False, False),
        (404, "session-not-found", False, False),
        (502, None, True, False),  # a proxy's answer, by status
        (503, None, True, False),
        (500, "internal-error", False, False),
    ],
)
def test_retries_follow_the_problem_type(
    status: int, slug: str | None, idempotent: bool, unsent: bool
) -> None:
    client: BaseClient[Any] = BaseClient.__new__(BaseClient)
    response = answer(status, slug)
    assert client._retry_after_response(RequestSpec("POST", "/"), response) is idempotent
    once = RequestSpec("POST", "/", retry="unsent")
    assert client._retry_after_response(once, response) is unsent
    error = _errors.status_error(response)
    if slug is not None:
        assert type(error) is _errors.PROBLEM_TYPES[slug]
    assert error.status_code == status


def test_the_sdks_header_names_are_the_services() -> None:
    document = create_app(Settings(redis_url="redis://127.0.0.1:1/0")).openapi()
    documented: set[str] = set()
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "header":
                    documented.add(parameter["name"].lower())
            for response in operation.get("responses", {}).values():
                documented.update(name.lower() for name in response.get("headers", {}))
    sent = {
        value.lower()
        for name, value in vars(_headers).items()
        if name.isupper() and isinstance(value, str)
    }
    assert sent and sent <= documented, sent - documented
