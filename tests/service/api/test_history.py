"""What each step records, over HTTP: points, their cap, rollback, rounds, the events."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.optim import AdamConfig, Schedule, adam_step, init_state
from adamhub_service.testing import LOOPBACK

ERRORS = "https://adamhub.dev/errors/"


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, chunk_elements=4)
    with TestClient(create_app(settings), client=LOOPBACK) as test_client:
        yield test_client


def create(client: TestClient, **body: Any) -> str:
    response = client.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    return session_id


def step(client: TestClient, sid: str, gradient: list[float], **headers: str) -> httpx.Response:
    response: httpx.Response = client.post(
        f"/v1/sessions/{sid}/step",
        json={"gradient": gradient},
        headers={name.replace("_", "-"): value for name, value in headers.items()},
    )
    return response


def points(client: TestClient, sid: str, **query: Any) -> list[dict[str, Any]]:
    response = client.get(f"/v1/sessions/{sid}/history", params=query)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["points"]
    return found


def test_each_step_records_its_point(client: TestClient) -> None:
    schedule = {"kind": "warmup_linear", "warmup_steps": 2, "total_steps": 10}
    sid = create(client, params=[1.0, -2.0, 0.5], optimizer={"lr": 0.1, "schedule": schedule})
    config = AdamConfig(lr=0.1, schedule=Schedule("warmup_linear", 2, 10))
    state = init_state(np.array([1.0, -2.0, 0.5], np.float32), config)
    started = time.time()
    gradients = [[3.0, 4.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
    for i, gradient in enumerate(gradients):
        answer = step(client, sid, gradient, Adamhub_Loss=str(2.0 - i), Adamhub_Worker="gpu-3",
                      Adamhub_Base_Step="0")  # fmt: skip
        assert answer.status_code == 200, answer.text
        before = state.params
        state = adam_step(state, np.array(gradient, np.float32), config)
        point = points(client, sid)[-1]
        assert point["t"] == i + 1
        assert started - 1 <= point["time"] <= time.time() + 1
        assert point["lr"] == pytest.approx(0.1 * Schedule("warmup_linear", 2, 10).factor(i + 1))
        assert point["grad_norm"] == pytest.approx(math.hypot(*gradient))
        assert point["update_norm"] == pytest.approx(float(np.linalg.norm(state.params - before)))
        assert point["loss"] == 2.0 - i
        assert point["staleness"] == i  # computed at t=0, applied after i steps
        assert point["worker"] == "gpu-3"
    plain = step(client, sid, [1.0, 1.0, 1.0])
    assert plain.status_code == 200
    last = points(client, sid)[-1]
    assert (last["loss"], last["staleness"], last["worker"]) == (None, None, "local")


def test_the_series_is_capped_and_read_after_a_step(client: TestClient) -> None:
    sid = create(client, size=2, history_points=5)
    for _ in range(12):
        assert step(client, sid, [1.0, 1.0]).status_code == 200
    assert [p["t"] for p in points(client, sid)] == [8, 9, 10, 11, 12]
    assert [p["t"] for p in points(client, sid, limit=2)] == [11, 12]
    assert [p["t"] for p in points(client, sid, after_t=9, limit=2)] == [10, 11]
    assert points(client, sid, after_t=12) == []
    assert (
        client.patch(f"/v1/sessions/{sid}", json={"history_points": 2}).json()["history_points"]
        == 2
    )
    assert step(client, sid, [1.0, 1.0]).status_code == 200
    assert [p["t"] for p in points(client, sid)] == [12, 13]
    off = create(client, size=2, history_points=0)
    assert step(client, off, [1.0, 1.0]).status_code == 200
    assert points(client, off) == []


def test_a_rollback_drops_the_points_after_it_and_a_reset_all(client: TestClient) -> None:
    sid = create(client, size=2, history_steps=10)
    for _ in range(6):
        step(client, sid, [1.0, 1.0])
    assert client.post(f"/v1/sessions/{sid}/rollback", json={"t": 3}).status_code == 200
    assert [p["t"] for p in points(client, sid)] == [1, 2, 3]
    step(client, sid, [1.0, 1.0], Adamhub_Loss="7")
    assert [(p["t"], p["loss"]) for p in points(client, sid)][-1] == (4, 7.0)
    reset = client.put(f"/v1/sessions/{sid}/params", json={"params": [0.0, 0.0]})
    assert reset.status_code == 200
    assert points(client, sid) == []


def test_a_round_records_the_samples_weighted_loss(client: TestClient) -> None:
    sid = create(client, size=2, rounds={"contributions": 3})
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(
            target=lambda n=n, loss=loss: answers.append(
                step(client, sid, [1.0, 1.0], Adamhub_Samples=str(n), **(
                    {"Adamhub_Loss": loss} if loss else {}))
            )
        )
        for n, loss in ((1, "1.0"), (3, "2.0"), (5, None))
    ]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [a.status_code for a in answers] == [200] * 3
    (point,) = points(client, sid)
    assert point["loss"] == pytest.approx((1 * 1.0 + 3 * 2.0) / 4)
    assert point["worker"] is None and point["staleness"] is None


@pytest.mark.parametrize(
    ("header", "value"),
    [("Adamhub-Loss", "nan"), ("Adamhub-Loss", "x"), ("Adamhub-Worker", " padded ")],
)
def test_bad_reports_are_refused_and_change_nothing(
    client: TestClient, header: str, value: str
) -> None:
    sid = create(client, size=2)
    refused = client.post(
        f"/v1/sessions/{sid}/step", json={"gradient": [1.0, 1.0]}, headers={header: value}
    )
    assert refused.status_code == 422
    assert refused.json()["type"] == ERRORS + "invalid-header"
    assert client.get(f"/v1/sessions/{sid}").json()["t"] == 0
    assert points(client, sid) == []


def test_history_queries_are_checked(client: TestClient) -> None:
    sid = create(client, size=2)
    for query in ("limit=0", "limit=100001", "after_t=-1", "after_t=x"):
        assert client.get(f"/v1/sessions/{sid}/history?{query}").status_code == 422
    assert client.get("/v1/sessions/s_" + "0" * 32 + "/history").status_code == 404


def test_events_stream_one_event_per_step_and_resume(service_url: str) -> None:
    with httpx.Client(base_url=service_url, timeout=20) as http:
        sid = http.post("/v1/sessions", json={"size": 3}).json()["id"]
        http.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0] * 3})
        seen: list[str] = []
        opened = threading.Event()

        def listen() -> None:
            with http.stream("GET", f"/v1/sessions/{sid}/events") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                opened.set()
                for line in response.iter_lines():
                    seen.append(line)
                    if sum(line.startswith("data:") for line in seen) == 3:
                        return

        listener = threading.Thread(target=listen)
        listener.start()
        assert opened.wait(10)
        time.sleep(0.2)
        for loss in (3.0, 2.0, 1.0):
            http.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0] * 3},
                      headers={"Adamhub-Loss": str(loss)})  # fmt: skip
        listener.join(15)
        ids = [int(line[4:]) for line in seen if line.startswith("id: ")]
        assert ids == [2, 3, 4]  # from the step after the stream opened, one each
        assert sum(line == "event: step" for line in seen) == 3
        # Resuming after id 2 replays 3 and 4 at once.
        with http.stream(
            "GET", f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": "2"}
        ) as response:
            replay = []
            for line in response.iter_lines():
                if line.startswith("id: "):
                    replay.append(int(line[4:]))
                if len(replay) == 2:
                    break
        assert replay == [3, 4]
