"""The step route's lane (``api/step_lane.py``): a step is served past the framework's
routing, and answered exactly as the framework would answer it — results, problems,
headers, the request's metrics and access log, the Host check."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import pytest
from fastapi.testclient import TestClient

from adamhub_service.api.step_lane import StepLane
from adamhub_service.app import AdamhubApp, create_app
from adamhub_service.config import Settings
from adamhub_service.testing import LOOPBACK

BINARY = "application/octet-stream"
STEP_ROUTE = "/v1/sessions/{session_id}/step"


@pytest.fixture
def app(redis_url: str) -> AdamhubApp:
    made = create_app(Settings(redis_url=redis_url, allowed_hosts=["testserver", "127.0.0.1"]))
    assert isinstance(made, AdamhubApp) and made.lane is not None
    return made


@pytest.fixture
def client(app: AdamhubApp) -> Iterator[TestClient]:
    with TestClient(app, client=LOOPBACK) as test_client:
        yield test_client


def requests_for(session_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Steps that succeed and steps that each fail in their own way."""
    gradient = np.linspace(-1, 1, 8, dtype=np.float32).tobytes()
    binary = {"Content-Type": BINARY, "Accept": BINARY}
    path = f"/v1/sessions/{session_id}/step"
    keyed = {"content": gradient, "headers": {**binary, "Idempotency-Key": "k-1"}}
    return [
        (path, {"json": {"gradient": [0.25] * 8}}),
        (path, keyed),
        (path, keyed),  # a retry: answered from its record
        (f"{path}?return=none", {"json": {"gradient": [0.5] * 8}}),
        (f"{path}?return=all", {"json": {"gradient": [0.5] * 8}}),
        (path, {"json": {"gradient": [1.0] * 3}}),
        (path, {"content": b"\0" * 5, "headers": binary}),
        (path, {"content": gradient, "headers": {**binary, "Adamhub-Dtype": "int4"}}),
        (path, {"content": b"{", "headers": {"Content-Type": "text/plain"}}),
        ("/v1/sessions/s_00000000000000000000000000000000/step", {"json": {"gradient": [0.0]}}),
        (path, {"json": {"gradient": [0.5] * 8}, "headers": {"Host": "elsewhere"}}),
    ]


def answers(client: TestClient, session_id: str) -> list[tuple[Any, ...]]:
    """What each request got: status, the problem's type or the body, the headers a
    client reads (not the request id, nor the time)."""
    seen = []
    for path, options in requests_for(session_id):
        response = client.post(path, **options)
        kept = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in {"x-request-id", "date", "content-length", "etag"}
        }
        is_problem = response.headers.get("content-type") == "application/problem+json"
        body = response.json()["type"] if is_problem else response.content
        seen.append((response.status_code, body, kept))
    return seen


class CountingLane:
    """The app's lane, counting the requests it serves."""

    def __init__(self, lane: StepLane) -> None:
        self.lane = lane
        self.served = 0

    def serves(self, scope: Any) -> bool:
        return self.lane.serves(scope)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.served += 1
        await self.lane(scope, receive, send)


def test_a_step_is_answered_by_the_lane_as_by_the_framework(
    app: AdamhubApp, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert app.lane is not None
    counting = CountingLane(app.lane)
    results = {}
    for through in ("lane", "framework"):
        app.lane = cast(StepLane, counting) if through == "lane" else None
        session_id = client.post("/v1/sessions", json={"size": 8}).json()["id"]
        with caplog.at_level(logging.INFO, logger="adamhub.access"):
            caplog.clear()
            answered = answers(client, session_id)
            logged = [record for record in caplog.records if "/step" in record.getMessage()]
        # Every step request, refused or not, has its access log line.
        assert len(logged) == len(answered)
        results[through] = [
            (status, len(body) if isinstance(body, bytes) else body, headers)
            for status, body, headers in answered
        ]
    # The lane took every step request while it was on, and none while it was off.
    assert counting.served == len(results["lane"])
    statuses = [status for status, _, _ in results["lane"]]
    assert statuses == [200, 200, 200, 200, 422, 422, 422, 415, 415, 404, 400]
    assert results["lane"] == results["framework"]
    # Its requests are counted under the route's template, as the framework's are.
    metrics = client.get("/metrics").text
    counted = f'adamhub_http_requests_total{{method="POST",route="{STEP_ROUTE}",status="200"}}'
    assert f"{counted} 8.0" in metrics
