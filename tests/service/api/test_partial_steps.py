"""Partial steps over HTTP against a real Redis: some segments (tensors) only, each
keeping its own step count; exact against the optimiser, replayed bit for bit
elsewhere, through rollback, checkpoints, forks and rounds."""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.optim import AdamConfig, AdamState, ParamGroup, adam_step, init_state
from adamhub_service.testing import LOOPBACK

BINARY = "application/octet-stream"
SEGMENTS = [3, 4, 3]
# One group of the first two segments (lr 0.1), one of the third (lr 0.02).
GROUPS: list[dict[str, Any]] = [{"size": 7, "lr": 0.1}, {"size": 3, "lr": 0.02}]


def make_client(redis_url: str) -> TestClient:
    settings = Settings(redis_url=redis_url, chunk_elements=4, round_wait_seconds=20)
    return TestClient(create_app(settings), client=LOOPBACK)


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with make_client(redis_url) as test_client:
        yield test_client


def config() -> AdamConfig:
    return AdamConfig(
        lr=0.05,
        weight_decay=0.01,
        decoupled_weight_decay=True,
        param_groups=tuple(ParamGroup(**g) for g in GROUPS),
        segment_sizes=tuple(SEGMENTS),
    )


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/sessions",
        json={
            "params": list(np.linspace(-1, 1, 10)),
            "dtype": "float64",
            "optimizer": {"lr": 0.05, "weight_decay": 0.01, "decoupled_weight_decay": True},
            "param_groups": GROUPS,
            "segments": SEGMENTS,
        }
        | body,
    )
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()
    return document


def step(
    client: TestClient, sid: str, gradient: np.ndarray, segments: tuple[int, ...] | None
) -> Any:
    headers = {"Content-Type": BINARY, "Accept": BINARY, "Adamhub-Dtype": "float64"}
    if segments is not None:
        headers["Adamhub-Segments"] = ",".join(map(str, segments))
    return client.post(f"/v1/sessions/{sid}/step", content=gradient.tobytes(), headers=headers)


PATTERN: list[tuple[int, ...] | None] = [
    None, (0, 2), (1,), None, (2,), (0,), (0, 1), None, (1, 2), (0,)
]  # fmt: skip


def test_partial_steps_match_the_optimiser_and_replay_bit_for_bit(
    client: TestClient, redis_url: str
) -> None:
    made = create(client)
    assert made["segments"] == SEGMENTS
    sid = made["id"]
    state = init_state(np.linspace(-1, 1, 10), config())
    rng = np.random.default_rng(0)
    ranges = [(0, 3), (3, 7), (7, 10)]
    for segments in PATTERN * 3:
        carried = range(3) if segments is None else segments
        gradient = np.concatenate([rng.normal(size=ranges[i][1] - ranges[i][0]) for i in carried])
        answer = step(client, sid, gradient, segments)
        assert answer.status_code == 200, answer.text
        state = adam_step(state, gradient, config(), segments)
        assert np.frombuffer(answer.content).tobytes() == state.params.tobytes()
    assert state.segment_steps is not None and len(set(state.segment_steps)) > 1
    # Another replica, without the state, rebuilds it from snapshots and the log.
    with make_client(redis_url) as other:
        rebuilt = other.get(f"/v1/sessions/{sid}/params", headers={"Accept": BINARY}).content
    assert rebuilt == state.params.tobytes()
    # The checkpoint has each segment's step count; an import goes on exactly.
    file = client.get(f"/v1/sessions/{sid}/checkpoint").content
    (length,) = struct.unpack("<Q", file[:8])
    metadata = json.loads(file[8 : 8 + length])["__metadata__"]
    assert json.loads(metadata["segment_steps"]) == list(state.segment_steps)
    imported = client.post(
        "/v1/sessions/import", content=file, headers={"Content-Type": BINARY}
    ).json()["id"]
    forked = client.post(f"/v1/sessions/{sid}/fork").json()["id"]
    gradient = rng.normal(size=4)
    state = adam_step(state, gradient, config(), (1,))
    for other_id in (sid, imported, forked):
        answer = step(client, other_id, gradient, (1,))
        assert np.frombuffer(answer.content).tobytes() == state.params.tobytes()


def test_a_rollback_returns_to_the_segments_step_counts(client: TestClient) -> None:
    sid = create(client, history_steps=10)["id"]
    states = [init_state(np.linspace(-1, 1, 10), config())]
    rng = np.random.default_rng(1)
    for segments in PATTERN:
        size = 10 if segments is None else sum(SEGMENTS[i] for i in segments)
        gradient = rng.normal(size=size)
        step(client, sid, gradient, segments)
        states.append(adam_step(states[-1], gradient, config(), segments))
    assert client.post(f"/v1/sessions/{sid}/rollback", json={"t": 3}).status_code == 200
    gradient = rng.normal(size=3)
    expected = adam_step(states[3], gradient, config(), (2,))
    answer = step(client, sid, gradient, (2,))
    assert np.frombuffer(answer.content).tobytes() == expected.params.tobytes()


def test_a_partial_step_uploads_and_stores_less(
    client: TestClient, redis_client: redis.Redis
) -> None:
    sid = create(client)["id"]
    before = int(redis_client.info("stats")["total_net_input_bytes"])
    step(client, sid, np.ones(10), None)
    full = int(redis_client.info("stats")["total_net_input_bytes"]) - before
    before = int(redis_client.info("stats")["total_net_input_bytes"])
    step(client, sid, np.ones(3), (2,))
    partial = int(redis_client.info("stats")["total_net_input_bytes"]) - before
    assert partial < full


@pytest.mark.parametrize(
    ("segments", "size", "kind"),
    [
        ("0,0", 6, "invalid-header"),
        ("2,1", 7, "invalid-header"),
        ("one", 3, "invalid-header"),
        ("3", 3, "validation-error"),
        ("0,2", 7, "wrong-size"),
    ],
)
def test_bad_partial_steps_are_refused_and_change_nothing(
    client: TestClient, redis_client: redis.Redis, segments: str, size: int, kind: str
) -> None:
    sid = create(client)["id"]
    meta = redis_client.hgetall(f"adamhub:{{{sid}}}:meta")
    answer = client.post(
        f"/v1/sessions/{sid}/step",
        content=np.ones(size).tobytes(),
        headers={"Content-Type": BINARY, "Adamhub-Dtype": "float64", "Adamhub-Segments": segments},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["type"].endswith(kind)
    assert redis_client.hgetall(f"adamhub:{{{sid}}}:meta") == meta


def test_segments_must_cover_the_session_and_hold_whole_groups(client: TestClient) -> None:
    for body in (
        {"size": 10, "segments": [3, 4]},
        {"size": 10, "segments": [3, 4, 3], "param_groups": [{"size": 5}, {"size": 5}]},
        {"size": 10, "segments": [10, 0]},
    ):
        assert client.post("/v1/sessions", json=body).status_code == 422, body
    plain = client.post("/v1/sessions", json={"size": 4}).json()["id"]
    answer = client.post(
        f"/v1/sessions/{plain}/step",
        content=np.ones(4, np.float32).tobytes(),
        headers={"Content-Type": BINARY, "Adamhub-Segments": "0"},
    )
    assert answer.status_code == 422
    assert "without segments" in answer.json()["detail"]


def test_a_rounds_segment_is_the_mean_of_the_workers_that_sent_it(client: TestClient) -> None:
    sid = create(client, rounds={"contributions": 3})["id"]
    a, b, c = np.full(10, 1.0), np.full(3, 2.0), np.full(7, 4.0)
    answers: list[Any] = [None] * 3

    def send(i: int, gradient: np.ndarray, segments: tuple[int, ...] | None) -> None:
        answers[i] = step(client, sid, gradient, segments)

    threads = [
        threading.Thread(target=send, args=args)
        for args in ((0, a, None), (1, b, (2,)), (2, c, (0, 1)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [answer.status_code for answer in answers] == [200] * 3
    # Segments 0 and 1: workers a and c; segment 2: a and b.
    mean = np.concatenate([np.full(7, 2.5), np.full(3, 1.5)])
    expected = adam_step(init_state(np.linspace(-1, 1, 10), config()), mean, config())
    assert np.frombuffer(answers[0].content).tobytes() == expected.params.tobytes()


def test_a_param_group_added_mid_run_steps_as_the_optimiser_does(
    client: TestClient, redis_url: str
) -> None:
    sid = create(client, history_steps=50)["id"]
    state = init_state(np.linspace(-1, 1, 10), config())
    rng = np.random.default_rng(2)
    for _ in range(4):
        gradient = rng.normal(size=10)
        step(client, sid, gradient, None)
        state = adam_step(state, gradient, config())
    added = np.array([0.5, -0.5, 0.25, 2.0, 1.0])
    grown = client.post(
        f"/v1/sessions/{sid}/param_groups",
        json={"params": list(added), "lr": 0.3, "segments": [2, 3]},
    )
    assert grown.status_code == 200, grown.text
    body = grown.json()
    assert (body["size"], body["segments"], body["t"]) == (15, [3, 4, 3, 2, 3], 4)
    assert body["param_groups"][-1] == {"size": 5, "lr": 0.3}
    grown_config = AdamConfig(
        lr=0.05,
        weight_decay=0.01,
        decoupled_weight_decay=True,
        param_groups=(*config().param_groups, ParamGroup(5, lr=0.3)),
        segment_sizes=(3, 4, 3, 2, 3),
    )
    zeros = np.zeros(5)
    state = AdamState(
        np.concatenate([state.params, added]),
        np.concatenate([state.exp_avg, zeros]),
        np.concatenate([state.exp_avg_sq, zeros]),
        None,
        4,
        (4, 4, 4, 0, 0),
    )
    for segments in [None, (3, 4), (0, 4), None]:
        size = 15 if segments is None else sum(grown_config.segment_sizes[i] for i in segments)
        gradient = rng.normal(size=size)
        answer = step(client, sid, gradient, segments)
        assert answer.status_code == 200, answer.text
        state = adam_step(state, gradient, grown_config, segments)
        assert np.frombuffer(answer.content).tobytes() == state.params.tobytes()
    # A worker that still has the old size is told the new one.
    old = step(client, sid, np.ones(10), None)
    assert old.status_code == 409
    assert old.json()["type"].endswith("size-changed")
    assert (old.json()["size"], old.json()["segments"]) == (15, [3, 4, 3, 2, 3])
    # Another replica rebuilds the grown state bit for bit; a rollback cannot cross it.
    with make_client(redis_url) as other:
        rebuilt = other.get(f"/v1/sessions/{sid}/params", headers={"Accept": BINARY}).content
    assert rebuilt == state.params.tobytes()
    back = client.post(f"/v1/sessions/{sid}/rollback", json={"t": 2})
    assert back.status_code == 409 and back.json()["oldest_t"] == 4
    assert client.post(f"/v1/sessions/{sid}/rollback", json={"t": 5}).status_code == 200


def test_a_param_group_past_the_quota_or_in_rounds_is_refused_and_changes_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = Settings(redis_url=redis_url, tenant_max_parameters=12)
    with TestClient(create_app(settings), client=LOOPBACK) as client:
        sid = create(client)["id"]
        meta = redis_client.hgetall(f"adamhub:{{{sid}}}:meta")
        over = client.post(f"/v1/sessions/{sid}/param_groups", json={"params": [1.0, 2.0, 3.0]})
        assert over.status_code == 403 and over.json()["type"].endswith("quota-exceeded")
        assert redis_client.hgetall(f"adamhub:{{{sid}}}:meta") == meta
        assert (
            client.post(f"/v1/sessions/{sid}/param_groups", json={"params": [1.0]}).status_code
            == 200
        )
        bad: dict[str, Any]
        for bad in (
            {"params": []},
            {"params": [1.0], "segments": [2]},
            {"params": [1.0], "lr": -1},
        ):
            assert client.post(f"/v1/sessions/{sid}/param_groups", json=bad).status_code == 422
        rounds = client.post("/v1/sessions", json={"size": 1, "rounds": {"contributions": 2}})
        refused = client.post(
            f"/v1/sessions/{rounds.json()['id']}/param_groups", json={"params": [1.0]}
        )
        assert refused.status_code == 422


def test_a_replica_that_missed_the_growth_answers_an_old_size_step_409(
    client: TestClient, redis_url: str
) -> None:
    sid = create(client)["id"]
    with make_client(redis_url) as other:
        assert step(other, sid, np.ones(10), None).status_code == 200  # other caches it
        grown = client.post(f"/v1/sessions/{sid}/param_groups", json={"params": [1.0, 2.0]})
        assert grown.status_code == 200
        stale = step(other, sid, np.ones(10), None)  # other still believes in 10
        assert stale.status_code == 409, stale.text
        assert stale.json()["type"].endswith("size-changed")
        assert step(other, sid, np.ones(12), None).status_code == 200
    assert client.get(f"/v1/sessions/{sid}").json()["t"] == 2
