"""The service's logs: one access line per request, JSON lines, request ids."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from adamhub_service.testing import ServiceProcess


def test_one_json_access_line_per_request_with_its_id(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    service = ServiceProcess(
        "--redis-url", redis_url, env={"ADAMHUB_LOG_FORMAT": "json"}, log_path=log
    ).start()
    try:
        with httpx.Client(base_url=service.base_url) as http:
            sid = http.post("/v1/sessions", json={"size": 2}).json()["id"]
            stepped = http.post(
                f"/v1/sessions/{sid}/step",
                json={"gradient": [1.0, 2.0]},
                headers={"X-Request-Id": "trace-42"},
            )
            assert stepped.headers["x-request-id"] == "trace-42"
            refused = http.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0]})
            made = refused.headers["x-request-id"]
            assert made.startswith("req_")
            assert refused.json()["request_id"] == made
            bad_id = http.get("/healthz", headers={"X-Request-Id": "x" * 200})
            assert bad_id.headers["x-request-id"].startswith("req_")  # not echoed as given
    finally:
        assert service.stop() == 0
    time.sleep(0.1)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "adamhub.access"]
    by_id = {line["request_id"]: line for line in access}
    step = by_id["trace-42"]
    assert step["level"] == "info"
    assert (step["method"], step["route"], step["status"]) == (
        "POST",
        "/v1/sessions/{session_id}/step",
        200,
    )
    assert (step["session"], step["t"]) == (sid, 1)
    assert step["duration_ms"] > 0 and step["time"].endswith("Z")
    assert by_id[made]["status"] == 422
    # every request of the test, and only those, once (readiness polls included)
    assert len(access) == len(by_id)
    assert {"/v1/sessions", "/healthz"} <= {line["route"] for line in access}
