"""Synchronous rounds over HTTP, in process, against a real Redis: weighted means,
completion, deadlines, staleness, retries, 202s, rollbacks and replay."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.optim import AdamConfig, adam_step, init_state
from adamhub_service.testing import LOOPBACK

BINARY = "application/octet-stream"
ERRORS = "https://adamhub.dev/errors/"
SIZE = 10
CONFIG = AdamConfig()


def make_client(redis_url: str) -> TestClient:
    settings = Settings(redis_url=redis_url, chunk_elements=4, round_wait_seconds=20)
    return TestClient(create_app(settings), client=LOOPBACK)


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with make_client(redis_url) as test_client:
        yield test_client


def create(client: TestClient, rounds: dict[str, Any], **body: Any) -> str:
    body = {"size": SIZE, "dtype": "float64", "rounds": rounds} | body
    response = client.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["rounds"] == {"min_contributions": 1, "aggregate": "mean"} | rounds
    session_id: str = response.json()["id"]
    return session_id


def contribute(
    client: TestClient, session_id: str, gradient: np.ndarray, **headers: str
) -> httpx.Response:
    response: httpx.Response = client.post(
        f"/v1/sessions/{session_id}/step",
        content=gradient.astype(np.float64).tobytes(),
        headers={"Content-Type": BINARY, "Accept": BINARY, "Adamhub-Dtype": "float64"}
        | {name.replace("_", "-"): value for name, value in headers.items()},
    )
    return response


def together(calls: list[Any]) -> list[Any]:
    """Run the calls on threads at once; their results in order."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def gradients(round_: int, workers: int) -> list[np.ndarray]:
    rng = np.random.default_rng(round_)
    return [rng.normal(size=SIZE) for _ in range(workers)]


def test_a_round_is_one_step_on_the_weighted_mean_and_every_worker_gets_it(
    client: TestClient,
) -> None:
    sid = create(client, {"contributions": 3}, optimizer={"lr": 0.1})
    state = init_state(np.zeros(SIZE), AdamConfig(lr=0.1))
    samples = [1, 2, 5]
    for round_ in range(3):
        grads = gradients(round_, 3)
        answers = together(
            [
                lambda g=g, n=n, base=round_: contribute(
                    client, sid, g, Adamhub_Base_Step=str(base), Adamhub_Samples=str(n)
                )
                for g, n in zip(grads, samples, strict=True)
            ]
        )
        mean = np.average(grads, axis=0, weights=samples)
        state = adam_step(state, mean, AdamConfig(lr=0.1))
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert answer.headers["adamhub-applied-step"] == str(round_ + 1)
            assert answer.headers["adamhub-step"] == str(round_ + 1)
            np.testing.assert_allclose(np.frombuffer(answer.content), state.params, atol=1e-12)
    assert client.get(f"/v1/sessions/{sid}").json()["t"] == 3


def test_target_samples_closes_when_the_samples_are_in(client: TestClient) -> None:
    sid = create(client, {"target_samples": 64})
    first = contribute(client, sid, np.ones(SIZE), Adamhub_Samples="40", Prefer="wait=0.2")
    assert first.status_code == 202
    assert first.json() == {"t": 0, "round": 1, "contributions": 1, "needed": 24}
    second = contribute(client, sid, np.ones(SIZE), Adamhub_Samples="30")
    assert second.status_code == 200
    assert second.headers["adamhub-applied-step"] == "1"


def test_a_202_contribution_stays_in_and_a_long_poll_gets_the_round(
    client: TestClient,
) -> None:
    sid = create(client, {"contributions": 2})
    started = time.monotonic()
    pending = contribute(client, sid, np.ones(SIZE), Adamhub_Base_Step="0", Prefer="wait=0.3")
    assert pending.status_code == 202
    assert pending.json() == {"t": 0, "round": 1, "contributions": 1, "needed": 1}
    assert time.monotonic() - started < 5
    poll: dict[str, httpx.Response] = {}
    poller = threading.Thread(
        target=lambda: poll.setdefault(
            "answer", client.get(f"/v1/sessions/{sid}/params?min_step=1&wait=30")
        )
    )
    poller.start()
    time.sleep(0.3)
    second = contribute(client, sid, 3 * np.ones(SIZE), Adamhub_Base_Step="0")
    poller.join(30)
    assert second.status_code == 200
    assert poll["answer"].json()["t"] == 1
    state = adam_step(init_state(np.zeros(SIZE), AdamConfig()), 2 * np.ones(SIZE), AdamConfig())
    np.testing.assert_allclose(poll["answer"].json()["params"], state.params, atol=1e-12)


def test_a_deadline_closes_the_round_with_those_in(client: TestClient) -> None:
    sid = create(client, {"contributions": 4, "timeout_seconds": 1.0, "min_contributions": 3})
    grads = gradients(0, 3)
    started = time.monotonic()
    answers = together(
        [lambda g=g: contribute(client, sid, g, Adamhub_Base_Step="0") for g in grads]
    )
    waited = time.monotonic() - started
    assert [a.status_code for a in answers] == [200] * 3
    assert 0.9 <= waited < 5, waited
    state = adam_step(
        init_state(np.zeros(SIZE), AdamConfig()), np.mean(grads, axis=0), AdamConfig()
    )
    np.testing.assert_allclose(np.frombuffer(answers[0].content), state.params, atol=1e-12)
    late = contribute(client, sid, grads[0], Adamhub_Base_Step="0")
    assert late.status_code == 409
    assert late.json()["type"] == ERRORS + "stale-gradient"
    assert late.json()["t"] == 1


def test_below_min_contributions_the_deadline_waits_for_the_next(client: TestClient) -> None:
    sid = create(client, {"contributions": 4, "timeout_seconds": 0.3, "min_contributions": 2})
    first = contribute(client, sid, np.ones(SIZE), Prefer="wait=0.8")
    assert first.status_code == 202  # past the deadline, but only one is in
    second = contribute(client, sid, np.ones(SIZE))
    assert second.status_code == 200  # the one the deadline waited for
    assert second.headers["adamhub-applied-step"] == "1"


def test_stale_and_sealed_contributions_are_refused_and_change_nothing(
    client: TestClient, redis_client: redis.Redis
) -> None:
    sid = create(client, {"contributions": 2})
    for base in ("1", "7"):
        refused = contribute(client, sid, np.ones(SIZE), Adamhub_Base_Step=base)
        assert refused.status_code == 409
        assert refused.json()["type"] == ERRORS + "stale-gradient"
        assert refused.json()["t"] == 0
    assert not redis_client.exists(f"adamhub:{{{sid}}}:round")
    assert len(redis_client.keys(f"adamhub:{{{sid}*:c:*:g:*")) == 0


def test_a_retried_contribution_counts_once_and_gets_its_rounds_answer(
    client: TestClient,
) -> None:
    sid = create(client, {"contributions": 2})
    g = np.arange(SIZE, dtype=np.float64)
    first = contribute(client, sid, g, Idempotency_Key="w1-r0", Prefer="wait=0")
    assert first.status_code == 202
    again = contribute(client, sid, g, Idempotency_Key="w1-r0", Prefer="wait=0")
    assert again.status_code == 202
    assert again.json()["contributions"] == 1  # counted once
    other = contribute(client, sid, -g, Idempotency_Key="w2-r0")
    assert other.status_code == 200
    after = contribute(client, sid, g, Idempotency_Key="w1-r0")
    assert after.status_code == 200
    assert after.headers["adamhub-applied-step"] == "1"
    assert after.headers["idempotent-replayed"] == "true"
    reused = contribute(client, sid, 2 * g, Idempotency_Key="w1-r0")
    assert reused.status_code == 422
    assert reused.json()["type"] == ERRORS + "idempotency-key-reused"
    # the mean of g and -g is zero: Adam moves nothing
    assert np.array_equal(np.frombuffer(after.content), np.zeros(SIZE))


def test_a_rollback_drops_the_open_round(client: TestClient, redis_client: redis.Redis) -> None:
    sid = create(client, {"contributions": 2}, history_steps=5)
    together([lambda: contribute(client, sid, np.ones(SIZE)) for _ in range(2)])
    assert contribute(client, sid, np.ones(SIZE), Prefer="wait=0").status_code == 202
    assert redis_client.exists(f"adamhub:{{{sid}}}:round")
    assert client.post(f"/v1/sessions/{sid}/rollback", json={"t": 0}).status_code == 200
    assert not redis_client.exists(f"adamhub:{{{sid}}}:round")
    fresh = contribute(client, sid, np.ones(SIZE), Adamhub_Base_Step="0", Prefer="wait=0")
    assert fresh.json()["contributions"] == 1


def test_a_replica_without_the_state_replays_rounds_bit_for_bit(
    client: TestClient, redis_url: str
) -> None:
    sid = create(client, {"contributions": 3}, optimizer={"lr": 0.05, "max_grad_norm": 1.0})
    for round_ in range(12):
        grads = gradients(round_, 3)
        together([lambda g=g: contribute(client, sid, g) for g in grads])
    with make_client(redis_url) as other:
        rebuilt = other.get(f"/v1/sessions/{sid}/params", headers={"Accept": BINARY})
    here = client.get(f"/v1/sessions/{sid}/params", headers={"Accept": BINARY})
    assert rebuilt.headers["adamhub-step"] == here.headers["adamhub-step"] == "12"
    assert rebuilt.content == here.content


def test_contributions_to_one_round_through_two_app_instances(
    client: TestClient, redis_url: str
) -> None:
    sid = create(client, {"contributions": 4})
    with make_client(redis_url) as other:
        grads = gradients(3, 4)
        answers = together(
            [
                lambda g=g, c=c: contribute(c, sid, g)
                for g, c in zip(grads, [client, other] * 2, strict=True)
            ]
        )
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.content for a in answers}) == 1
    state = adam_step(
        init_state(np.zeros(SIZE), AdamConfig()), np.mean(grads, axis=0), AdamConfig()
    )
    np.testing.assert_allclose(np.frombuffer(answers[0].content), state.params, atol=1e-12)


@pytest.mark.parametrize(
    ("rounds", "message"),
    [
        ({}, "exactly one"),
        ({"contributions": 2, "target_samples": 8}, "exactly one"),
        ({"contributions": 2, "min_contributions": 3}, "min_contributions"),
        ({"contributions": 0}, "greater than or equal to 1"),
        ({"contributions": 2, "timeout_seconds": 0}, "greater than 0"),
        ({"contributions": 2, "extra": 1}, "extra"),
        ({"contributions": 2, "timeout_seconds": None}, "not null"),
    ],
)
def test_bad_rounds_are_refused(client: TestClient, rounds: dict[str, Any], message: str) -> None:
    response = client.post("/v1/sessions", json={"size": 2, "rounds": rounds})
    assert response.status_code == 422
    assert message in response.text


def test_bad_samples_headers_are_refused_and_change_nothing(
    client: TestClient, redis_client: redis.Redis
) -> None:
    sid = create(client, {"contributions": 2})
    for samples in ("0", "-1", "1.5", "x", "99999999999999"):
        response = contribute(client, sid, np.ones(SIZE), Adamhub_Samples=samples)
        assert response.status_code == 422, samples
        assert "Adamhub-Samples" in response.json()["detail"]
    assert not redis_client.exists(f"adamhub:{{{sid}}}:round")


def test_an_asynchronous_session_takes_samples_and_steps_at_once(client: TestClient) -> None:
    response = client.post("/v1/sessions", json={"size": SIZE})
    sid = response.json()["id"]
    assert response.json()["rounds"] is None
    stepped = client.post(
        f"/v1/sessions/{sid}/step",
        json={"gradient": [1.0] * SIZE},
        headers={"Adamhub-Samples": "16"},
    )
    assert stepped.status_code == 200
    assert stepped.json()["applied_t"] == 1


def test_a_round_whose_step_is_not_finite_is_dropped_and_the_next_goes_on(
    client: TestClient, redis_client: redis.Redis
) -> None:
    sid = create(client, {"contributions": 2}, dtype="float32")
    huge = np.full(SIZE, 3e38)  # finite in float32; its square, in v, is not
    answers = together(
        [lambda: contribute32(client, sid, huge, Adamhub_Base_Step="0") for _ in range(2)]
    )
    assert [a.status_code for a in answers] == [422, 422]
    for answer in answers:
        assert answer.json()["type"] == ERRORS + "non-finite-update"
        assert "round of step 1 was dropped with its 2 contributions" in answer.json()["detail"]
    assert client.get(f"/v1/sessions/{sid}").json()["t"] == 0
    assert not redis_client.exists(f"adamhub:{{{sid}}}:round")
    assert redis_client.keys(f"adamhub:{{{sid}*:c:*:g:*") == []
    again = together(
        [lambda: contribute32(client, sid, np.ones(SIZE), Adamhub_Base_Step="0") for _ in range(2)]
    )
    assert [a.status_code for a in again] == [200, 200]
    assert again[0].headers["adamhub-applied-step"] == "1"


def contribute32(
    client: TestClient, session_id: str, gradient: np.ndarray, **headers: str
) -> httpx.Response:
    response: httpx.Response = client.post(
        f"/v1/sessions/{session_id}/step",
        content=gradient.astype(np.float32).tobytes(),
        headers={"Content-Type": BINARY, "Adamhub-Dtype": "float32"}
        | {name.replace("_", "-"): value for name, value in headers.items()},
    )
    return response


def test_settings_carried_by_contributions_apply_to_the_rounds_step(client: TestClient) -> None:
    sid = create(client, {"contributions": 2}, optimizer={"lr": 0.1})
    settings = '{"optimizer": {"lr": 0.5}}'
    grads = gradients(7, 2)
    answers = together(
        [
            lambda: contribute(client, sid, grads[0], Adamhub_Optimizer=settings),
            lambda: contribute(client, sid, grads[1]),
        ]
    )
    assert [a.status_code for a in answers] == [200, 200]
    config = AdamConfig(lr=0.5)
    state = adam_step(init_state(np.zeros(SIZE), config), np.mean(grads, axis=0), config)
    np.testing.assert_allclose(np.frombuffer(answers[0].content), state.params, atol=1e-12)
    assert client.get(f"/v1/sessions/{sid}").json()["optimizer"]["lr"] == 0.5


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"aggregate": "median"}, lambda grads: np.median(grads, axis=0)),
        (
            {"aggregate": "trimmed_mean", "trim": 0.2},
            lambda grads: np.sort(grads, axis=0)[1:-1].mean(axis=0),
        ),
    ],
)
def test_a_robust_round_steps_on_its_aggregate_and_replays_bit_for_bit(
    client: TestClient, redis_url: str, rule: dict[str, Any], expected: Any
) -> None:
    sid = create(client, {"contributions": 5} | rule)
    state = init_state(np.zeros(SIZE), CONFIG)
    for round_ in range(4):
        grads = [*gradients(round_, 4), np.full(SIZE, 1e9)]  # one worker sends garbage
        answers = together([lambda g=g: contribute(client, sid, g) for g in grads])
        assert [a.status_code for a in answers] == [200] * 5
        state = adam_step(state, expected(np.array(grads)), CONFIG)
        np.testing.assert_allclose(np.frombuffer(answers[0].content), state.params, atol=1e-12)
    with make_client(redis_url) as other:
        rebuilt = other.get(f"/v1/sessions/{sid}/params", headers={"Accept": BINARY})
    here = client.get(f"/v1/sessions/{sid}/params", headers={"Accept": BINARY})
    assert rebuilt.headers["adamhub-step"] == "4"
    assert rebuilt.content == here.content


@pytest.mark.parametrize(
    ("rounds", "message"),
    [
        ({"contributions": 3, "aggregate": "centered_clip"}, "clip_radius"),
        ({"contributions": 3, "aggregate": "median", "trim": 0.1}, "trim"),
        ({"contributions": 3, "aggregate": "trimmed_mean", "trim": 0.5}, "less than 0.5"),
        ({"contributions": 3, "clip_radius": 1.0}, "clip_radius"),
        ({"contributions": 3, "aggregate": "krum"}, "aggregate"),
        ({"contributions": 3, "aggregate": "centered_clip", "clip_radius": 0}, "greater than 0"),
    ],
)
def test_bad_aggregates_are_refused(
    client: TestClient, rounds: dict[str, Any], message: str
) -> None:
    response = client.post("/v1/sessions", json={"size": 2, "rounds": rounds})
    assert response.status_code == 422
    assert message in response.text


def test_a_waiting_contribution_is_held_in_memory_and_stored_before_a_202(
    client: TestClient, redis_client: redis.Redis
) -> None:
    sid = create(client, {"contributions": 2})
    round_key, chunks = f"adamhub:{{{sid}}}:round", f"adamhub:{{{sid}*:c:*:g:*"
    first = np.arange(SIZE, dtype=np.float64)
    waiting = threading.Thread(target=lambda: answers.append(contribute(client, sid, first)))
    answers: list[httpx.Response] = []
    waiting.start()
    deadline = time.monotonic() + 10
    while int(redis_client.hget(round_key, "n") or 0) < 1:
        assert time.monotonic() < deadline, "the contribution did not arrive"
        time.sleep(0.01)
    # Counted by the store, its gradient in this process's memory only.
    assert redis_client.hget(round_key, "held") == b"1"
    assert redis_client.hexists(round_key, "m1")
    assert redis_client.keys(chunks) == []
    closing = contribute(client, sid, -first)
    waiting.join(10)
    assert closing.status_code == answers[0].status_code == 200
    assert closing.content == answers[0].content
    assert not redis_client.exists(round_key)

    # A worker told its contribution is in (202) may count on it: it is stored first.
    pending = contribute(client, sid, first, Prefer="wait=0.3")
    assert pending.status_code == 202, pending.text
    assert pending.json()["contributions"] == 1
    assert int(redis_client.hget(round_key, "held") or 0) == 0
    assert not redis_client.hexists(round_key, "m1")
    entry = redis_client.hget(round_key, "1")
    assert isinstance(entry, bytes)
    write_id = entry.split()[0].decode()
    assert len(redis_client.keys(f"adamhub:{{{sid}*:c:{write_id}:g:*")) == 3  # 10 in 4s
    closed = contribute(client, sid, first)
    assert closed.status_code == 200
    assert closed.headers["adamhub-applied-step"] == "2"
