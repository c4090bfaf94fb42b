"""Screening and quarantine over HTTP against a real Redis: outliers and non-finite
gradients refused without changing the session, repeat offenders quarantined, other
workers untouched, everything visible in the history and the event stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.testing import LOOPBACK

BINARY = "application/octet-stream"
SCREEN = {"max_norm_ratio": 3, "window": 4, "quarantine_after": 2, "quarantine_seconds": 60}


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, round_wait_seconds=20)
    with TestClient(create_app(settings), client=LOOPBACK) as test_client:
        yield test_client


def step(client: TestClient, sid: str, gradient: np.ndarray, worker: str) -> Any:
    return client.post(
        f"/v1/sessions/{sid}/step",
        content=gradient.astype(np.float32).tobytes(),
        headers={"Content-Type": BINARY, "Accept": BINARY, "Adamhub-Worker": worker},
    )


def test_outliers_are_refused_and_a_repeat_offender_is_quarantined(
    client: TestClient, redis_client: redis.Redis
) -> None:
    sid = client.post("/v1/sessions", json={"size": 10, "screen": SCREEN}).json()["id"]
    rng = np.random.default_rng(0)
    for _ in range(4):
        assert step(client, sid, rng.normal(size=10), "good").status_code == 200
    meta = redis_client.hgetall(f"adamhub:{{{sid}}}:meta")
    params = client.get(f"/v1/sessions/{sid}/params").json()
    first = step(client, sid, 100 * rng.normal(size=10), "bad")
    assert first.status_code == 422, first.text
    problem = first.json()
    assert problem["type"].endswith("outlier-gradient")
    assert problem["norm"] > problem["bound"] > 0
    # Nothing changed but the worker's record.
    assert redis_client.hgetall(f"adamhub:{{{sid}}}:meta") == meta
    assert client.get(f"/v1/sessions/{sid}/params").json() == params
    # Not finite counts too; the second refusal in a row quarantines the worker.
    nan = np.full(10, np.nan)
    assert step(client, sid, nan, "bad").json()["type"].endswith("non-finite-value")
    quarantined = step(client, sid, rng.normal(size=10), "bad")
    assert quarantined.status_code == 403
    assert quarantined.json()["type"].endswith("worker-quarantined")
    assert quarantined.json()["until"].endswith("Z")
    # Other workers go on untouched.
    assert step(client, sid, rng.normal(size=10), "good").status_code == 200
    assert client.get(f"/v1/sessions/{sid}").json()["t"] == 5
    history = client.get(f"/v1/sessions/{sid}/history").json()
    assert [r["reason"] for r in history["refusals"]] == ["outlier", "non_finite"]
    assert [r["worker"] for r in history["refusals"]] == ["bad", "bad"]
    assert history["refusals"][1]["quarantined_until"] is not None
    assert list(history["quarantined"]) == ["bad"]
    # The owner ends the quarantine.
    assert client.delete(f"/v1/sessions/{sid}/quarantine/bad").status_code == 204
    assert client.get(f"/v1/sessions/{sid}/history").json()["quarantined"] == {}
    assert step(client, sid, rng.normal(size=10), "bad").status_code == 200


def test_before_the_window_fills_nothing_is_refused_and_null_turns_it_off(
    client: TestClient,
) -> None:
    sid = client.post("/v1/sessions", json={"size": 4, "screen": SCREEN}).json()["id"]
    assert client.get(f"/v1/sessions/{sid}").json()["screen"] == {
        "max_norm_ratio": 3.0,
        "window": 4,
        "quarantine_after": 2,
        "quarantine_seconds": 60.0,
    }
    for scale in (1, 1000, 1, 1):  # the window is not full yet: a large one is accepted
        assert step(client, sid, np.full(4, scale), "w").status_code == 200
    assert step(client, sid, np.full(4, 1e6), "w").status_code == 422
    patched = client.patch(f"/v1/sessions/{sid}", json={"screen": None})
    assert patched.json()["screen"] is None
    assert step(client, sid, np.full(4, 1e6), "w").status_code == 200


def test_screening_refuses_an_outlier_contribution_and_the_round_goes_on(
    client: TestClient,
) -> None:
    sid = client.post(
        "/v1/sessions",
        json={"size": 4, "rounds": {"contributions": 2}, "screen": SCREEN | {"window": 2}},
    ).json()["id"]
    answers: dict[str, Any] = {}

    def send(name: str, gradient: np.ndarray) -> None:
        answers[name] = step(client, sid, gradient, name)

    for _ in range(2):  # two rounds fill the window
        threads = [threading.Thread(target=send, args=(name, np.ones(4))) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    refused = step(client, sid, np.full(4, 1e4), "c")
    assert refused.status_code == 422 and refused.json()["type"].endswith("outlier-gradient")
    threads = [threading.Thread(target=send, args=(name, np.ones(4))) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [answers[n].status_code for n in ("a", "b")] == [200, 200]
    assert client.get(f"/v1/sessions/{sid}").json()["t"] == 3


def test_the_event_stream_tells_of_refusals(client: TestClient) -> None:
    sid = client.post("/v1/sessions", json={"size": 4, "screen": SCREEN | {"window": 1}}).json()[
        "id"
    ]
    assert step(client, sid, np.ones(4), "w").status_code == 200
    assert step(client, sid, np.full(4, 100.0), "x").status_code == 422  # before: not sent

    def refuse_later() -> None:
        time.sleep(0.3)
        step(client, sid, np.full(4, 200.0), "y")

    sender = threading.Thread(target=refuse_later)
    with client.stream("GET", f"/v1/sessions/{sid}/events") as events:
        sender.start()
        lines = events.iter_lines()
        for line in lines:
            if line == "event: refusal":
                data = next(lines)
                break
    sender.join(10)
    assert '"worker":"y"' in data and '"reason":"outlier"' in data


@pytest.mark.parametrize(
    "screen",
    [
        {"max_norm_ratio": 1},
        {"window": 0},
        {"quarantine_after": 0},
        {"quarantine_seconds": 0},
        {"max_norm_ratio": None},
        {"other": 1},
    ],
)
def test_bad_screens_are_refused(client: TestClient, screen: dict[str, Any]) -> None:
    assert client.post("/v1/sessions", json={"size": 2, "screen": screen}).status_code == 422
