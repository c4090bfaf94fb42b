"""The HTTP API of docs/api.md, in process, against a real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.optim import AdamConfig, ParamGroup, Schedule, adam_step, init_state
from adamhub_service.sessions.janitor import Janitor
from adamhub_service.testing import LOOPBACK

BINARY = "application/octet-stream"
ERRORS = "https://adamhub.dev/errors/"


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    # Small chunks, so that every vector here spans several of them.
    settings = Settings(
        redis_url=redis_url, chunk_elements=4, max_size=10_000, max_json_bytes=200_000
    )
    with TestClient(create_app(settings), client=LOOPBACK) as test_client:
        yield test_client


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()
    return document


def params_of(client: TestClient, session_id: str, dtype: str = "float32") -> np.ndarray:
    response = client.get(f"/v1/sessions/{session_id}/params", headers={"Accept": BINARY})
    assert response.status_code == 200
    return np.frombuffer(response.content, dtype=dtype)


def snapshot(client: TestClient, redis_client: redis.Redis, session_id: str) -> tuple[Any, ...]:
    """Everything a rejected request must leave as it was."""
    meta = redis_client.hgetall(f"adamhub:{{{session_id}}}:meta")
    keys = sorted(redis_client.keys(f"adamhub:{{{session_id}}}:*"))
    return meta, keys, params_of(client, session_id).tobytes()


# -- sessions ---------------------------------------------------------------------------


def test_create_with_params_fills_defaults(client: TestClient) -> None:
    response = client.post(
        "/v1/sessions", json={"params": [0.5, -1.0, 2.0], "name": "run-7", "metadata": {"a": [1]}}
    )
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/v1/sessions/{body['id']}"
    assert body["size"] == 3
    assert body["dtype"] == "float32"
    assert body["t"] == 0
    assert body["name"] == "run-7"
    assert body["metadata"] == {"a": [1]}
    assert body["optimizer"] == {
        "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
        "decoupled_weight_decay": False, "amsgrad": False, "maximize": False,
        "schedule": {"kind": "constant", "warmup_steps": 0, "total_steps": 0,
                     "final_lr_ratio": 0.0},
        "max_grad_norm": None,
    }  # fmt: skip
    assert body["param_groups"] is None
    assert client.get(f"/v1/sessions/{body['id']}").json() == body
    assert params_of(client, body["id"]).tolist() == [0.5, -1.0, 2.0]


def test_create_with_size_and_init(client: TestClient) -> None:
    zeros = create(client, size=10)
    assert params_of(client, zeros["id"]).tolist() == [0.0] * 10
    init = {"kind": "normal", "std": 0.02, "seed": 7}
    a = create(client, size=1000, init=init, dtype="float64")
    b = create(client, size=1000, init=init, dtype="float64")
    expected = np.random.default_rng(7).normal(0.0, 0.02, 1000)
    assert np.array_equal(params_of(client, a["id"], "float64"), expected)
    assert np.array_equal(params_of(client, b["id"], "float64"), expected)


def test_list_pages_through_sessions_in_creation_order(client: TestClient) -> None:
    ids = [create(client, size=1)["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/sessions", params=query).json()
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids


def test_patch_changes_settings_for_the_steps_that_follow(client: TestClient) -> None:
    session = create(client, params=[1.0, 2.0], optimizer={"lr": 0.1})
    sid = session["id"]
    client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0, 1.0]})
    response = client.patch(
        f"/v1/sessions/{sid}", json={"optimizer": {"lr": 0.5}, "name": "x", "metadata": {"k": 1}}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["optimizer"]["lr"] == 0.5
    assert body["optimizer"]["betas"] == [0.9, 0.999]
    assert body["name"] == "x"
    assert body["metadata"] == {"k": 1}
    assert body["t"] == 1

    expected = init_state(np.array([1.0, 2.0], np.float32), AdamConfig(lr=0.1))
    expected = adam_step(expected, np.ones(2, np.float32), AdamConfig(lr=0.1))
    expected = adam_step(expected, np.ones(2, np.float32), AdamConfig(lr=0.5))
    result = client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0, 1.0]}).json()
    assert np.array_equal(np.array(result["params"], np.float32), expected.params)


def test_patch_cannot_toggle_amsgrad(client: TestClient, redis_client: redis.Redis) -> None:
    sid = create(client, params=[1.0])["id"]
    before = snapshot(client, redis_client, sid)
    response = client.patch(f"/v1/sessions/{sid}", json={"optimizer": {"amsgrad": True}})
    assert response.status_code == 422
    assert response.json()["type"] == ERRORS + "validation-error"
    assert snapshot(client, redis_client, sid) == before


def test_delete_removes_every_key(client: TestClient, redis_client: redis.Redis) -> None:
    sid = create(client, size=10, optimizer={"amsgrad": True})["id"]
    client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0] * 10})
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    assert redis_client.keys(f"adamhub:{{{sid}}}:*") == []
    for method, path in [("GET", ""), ("GET", "/params"), ("DELETE", ""), ("PATCH", "")]:
        response = client.request(method, f"/v1/sessions/{sid}{path}", json={})
        assert response.status_code == 404
        assert response.json()["type"] == ERRORS + "session-not-found"
    assert client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0] * 10}).status_code == 404


# -- steps ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_steps_follow_the_optimiser_bit_for_bit(client: TestClient, dtype: str) -> None:
    options = {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "amsgrad": True}
    config = AdamConfig(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True)
    rng = np.random.default_rng(0)
    start = rng.normal(size=9).astype(dtype)
    sid = create(client, params=start.tolist(), dtype=dtype, optimizer=options)["id"]
    state = init_state(start, config)
    for t in range(1, 7):
        grad = rng.normal(size=9).astype(dtype)
        state = adam_step(state, grad, config)
        if t % 2:  # JSON in, JSON out
            response = client.post(f"/v1/sessions/{sid}/step", json={"gradient": grad.tolist()})
            body = response.json()
            assert body["t"] == body["applied_t"] == t
            params = np.array(body["params"], dtype=dtype)
        else:  # binary in, binary out
            response = client.post(
                f"/v1/sessions/{sid}/step",
                content=grad.tobytes(),
                headers={"Content-Type": BINARY, "Accept": BINARY},
            )
            assert response.headers["content-type"] == BINARY
            assert (
                response.headers["adamhub-step"]
                == response.headers["adamhub-applied-step"]
                == str(t)
            )
            params = np.frombuffer(response.content, dtype=dtype)
        assert np.array_equal(params, state.params)


@pytest.mark.parametrize("wire", ["float16", "float32", "float64"])
def test_binary_gradient_in_another_dtype_is_converted(client: TestClient, wire: str) -> None:
    sid = create(client, params=[1.0, 2.0, 3.0], optimizer={"lr": 0.1})["id"]
    grad = np.array([0.5, -0.25, 2.0], dtype=wire)
    response = client.post(
        f"/v1/sessions/{sid}/step",
        content=grad.tobytes(),
        headers={"Content-Type": BINARY, "Adamhub-Dtype": wire},
    )
    assert response.status_code == 200
    config = AdamConfig(lr=0.1)
    expected = adam_step(
        init_state(np.array([1.0, 2.0, 3.0], np.float32), config), grad.astype(np.float32), config
    )
    assert np.array_equal(np.array(response.json()["params"], np.float32), expected.params)


def test_return_none_answers_only_the_step(client: TestClient) -> None:
    sid = create(client, size=3)["id"]
    response = client.post(f"/v1/sessions/{sid}/step?return=none", json={"gradient": [1, 2, 3]})
    assert response.json() == {"t": 1, "applied_t": 1}


def test_idempotency_key_applies_once(client: TestClient) -> None:
    sid = create(client, size=3, optimizer={"lr": 0.1})["id"]
    first = client.post(
        f"/v1/sessions/{sid}/step", json={"gradient": [1, 2, 3]}, headers={"Idempotency-Key": "k-1"}
    )
    assert first.status_code == 200
    assert "idempotent-replayed" not in first.headers
    client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1, 1, 1]})
    # The same key and gradient, sent as binary this time: a replay of step 1.
    replay = client.post(
        f"/v1/sessions/{sid}/step",
        content=np.array([1, 2, 3], np.float32).tobytes(),
        headers={"Idempotency-Key": "k-1", "Content-Type": BINARY},
    )
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["applied_t"] == 1
    assert replay.json()["t"] == 2
    assert client.get(f"/v1/sessions/{sid}").json()["t"] == 2

    reused = client.post(
        f"/v1/sessions/{sid}/step", json={"gradient": [9, 9, 9]}, headers={"Idempotency-Key": "k-1"}
    )
    assert reused.status_code == 422
    assert reused.json()["type"] == ERRORS + "idempotency-key-reused"
    assert client.get(f"/v1/sessions/{sid}").json()["t"] == 2


def test_etag_and_not_modified(client: TestClient) -> None:
    sid = create(client, size=3)["id"]
    first = client.get(f"/v1/sessions/{sid}/params")
    etag = first.headers["etag"]
    assert first.headers["adamhub-step"] == "0"
    assert first.json() == {
        "t": 0,
        "params": [0.0, 0.0, 0.0],
    }
    again = client.get(f"/v1/sessions/{sid}/params", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1, 2, 3]})
    changed = client.get(f"/v1/sessions/{sid}/params", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.headers["adamhub-step"] == "1"


def test_put_params_starts_over(client: TestClient) -> None:
    config = AdamConfig(lr=0.1)
    sid = create(client, params=[1.0, 2.0], optimizer={"lr": 0.1})["id"]
    for _ in range(3):
        client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0, -1.0]})
    response = client.put(
        f"/v1/sessions/{sid}/params",
        content=np.array([5.0, 6.0], np.float32).tobytes(),
        headers={"Content-Type": BINARY},
    )
    assert response.status_code == 200
    assert response.json()["t"] == 0
    assert params_of(client, sid).tolist() == [5.0, 6.0]
    after = client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0, -1.0]}).json()
    expected = adam_step(
        init_state(np.array([5.0, 6.0], np.float32), config),
        np.array([1.0, -1.0], np.float32),
        config,
    )
    assert after["t"] == 1
    assert np.array_equal(np.array(after["params"], np.float32), expected.params)
    assert client.put(f"/v1/sessions/{sid}/params", json={"params": [7.0, 8.0]}).status_code == 200
    assert params_of(client, sid).tolist() == [7.0, 8.0]


# -- bad input: the status, the problem type, and nothing changed --------------------------

BAD_STEPS: list[tuple[str, dict[str, str], bytes, int, str]] = [
    (
        "NaN literal",
        {"Content-Type": "application/json"},
        b'{"gradient": [1, NaN, 3]}',
        422,
        "non-finite-value",
    ),
    (
        "Infinity literal",
        {"Content-Type": "application/json"},
        b'{"gradient": [1, 2, -Infinity]}',
        422,
        "non-finite-value",
    ),
    (
        "1e400",
        {"Content-Type": "application/json"},
        b'{"gradient": [1, 1e400, 3]}',
        422,
        "non-finite-value",
    ),
    (
        "over float32",
        {"Content-Type": "application/json"},
        b'{"gradient": [1, 2, 1e39]}',
        422,
        "non-finite-value",
    ),
    (
        "wrong length",
        {"Content-Type": "application/json"},
        b'{"gradient": [1, 2]}',
        422,
        "wrong-size",
    ),
    (
        "nested",
        {"Content-Type": "application/json"},
        b'{"gradient": [[1], [2], [3]]}',
        422,
        "invalid-vector",
    ),
    (
        "strings",
        {"Content-Type": "application/json"},
        b'{"gradient": ["1", "2", "3"]}',
        422,
        "invalid-vector",
    ),
    (
        "booleans",
        {"Content-Type": "application/json"},
        b'{"gradient": [1, true, 3]}',
        422,
        "invalid-vector",
    ),
    (
        "nulls",
        {"Content-Type": "application/json"},
        b'{"gradient": [1, null, 3]}',
        422,
        "invalid-vector",
    ),
    (
        "not an array",
        {"Content-Type": "application/json"},
        b'{"gradient": 3}',
        422,
        "invalid-vector",
    ),
    (
        "no gradient",
        {"Content-Type": "application/json"},
        b'{"grad": [1, 2, 3]}',
        422,
        "invalid-vector",
    ),
    ("not an object", {"Content-Type": "application/json"}, b"[1, 2, 3]", 422, "malformed-json"),
    (
        "malformed",
        {"Content-Type": "application/json"},
        b'{"gradient": [1, 2,',
        422,
        "malformed-json",
    ),
    ("empty JSON", {"Content-Type": "application/json"}, b"", 422, "malformed-json"),
    ("empty binary", {"Content-Type": BINARY}, b"", 422, "invalid-vector"),
    ("ragged bytes", {"Content-Type": BINARY}, b"\x00" * 11, 422, "invalid-vector"),
    (
        "binary wrong length",
        {"Content-Type": BINARY},
        np.ones(4, np.float32).tobytes(),
        422,
        "wrong-size",
    ),
    (
        "binary NaN",
        {"Content-Type": BINARY},
        np.array([1, np.nan, 1], np.float32).tobytes(),
        422,
        "non-finite-value",
    ),
    (
        "binary inf",
        {"Content-Type": BINARY},
        np.array([1, 1, np.inf], np.float32).tobytes(),
        422,
        "non-finite-value",
    ),
    (
        "float64 over float32",
        {"Content-Type": BINARY, "Adamhub-Dtype": "float64"},
        np.array([1, 1e300, 1]).tobytes(),
        422,
        "non-finite-value",
    ),
    (
        "unknown dtype",
        {"Content-Type": BINARY, "Adamhub-Dtype": "int8"},
        b"\x01\x02\x03",
        415,
        "unsupported-media-type",
    ),
    ("text body", {"Content-Type": "text/plain"}, b"1,2,3", 415, "unsupported-media-type"),
    ("no content type", {}, b"1,2,3", 415, "unsupported-media-type"),
    (
        "bad idempotency key",
        {"Content-Type": "application/json", "Idempotency-Key": "has space"},
        b'{"gradient": [1, 2, 3]}',
        422,
        "invalid-header",
    ),
    ("too long, refused unread", {"Content-Type": BINARY}, b"\x00" * 200_004, 422, "wrong-size"),
    (
        "JSON too large",
        {"Content-Type": "application/json"},
        b'{"gradient": [' + b"1.0, " * 50_000 + b"1.0]}",
        413,
        "payload-too-large",
    ),
]


@pytest.mark.parametrize(
    ("headers", "body", "status", "kind"),
    [case[1:] for case in BAD_STEPS],
    ids=[case[0] for case in BAD_STEPS],
)
def test_bad_gradients_are_refused_and_change_nothing(
    client: TestClient,
    redis_client: redis.Redis,
    headers: dict[str, str],
    body: bytes,
    status: int,
    kind: str,
) -> None:
    sid = create(client, params=[1.0, 2.0, 3.0])["id"]
    client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1, 1, 1]})
    before = snapshot(client, redis_client, sid)
    response = client.post(f"/v1/sessions/{sid}/step", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == ERRORS + kind
    assert problem["status"] == status
    assert problem["detail"]
    assert snapshot(client, redis_client, sid) == before


def test_problem_names_the_first_bad_element_and_the_expected_size(client: TestClient) -> None:
    sid = create(client, size=5)["id"]
    bad = np.array([1, 2, 3, np.nan, np.inf], np.float32).tobytes()
    problem = client.post(
        f"/v1/sessions/{sid}/step", content=bad, headers={"Content-Type": BINARY}
    ).json()
    assert problem["index"] == 3
    problem = client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1, 2]}).json()
    assert problem["expected_size"] == 5
    assert problem["actual_size"] == 2


def test_an_update_that_would_overflow_commits_nothing(
    client: TestClient, redis_client: redis.Redis
) -> None:
    sid = create(client, params=[1.0, 2.0])["id"]
    before = snapshot(client, redis_client, sid)
    response = client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0, 3e38]})
    assert response.status_code == 422
    assert response.json()["type"] == ERRORS + "non-finite-update"
    assert response.json()["index"] == 1
    assert snapshot(client, redis_client, sid) == before


BAD_CREATES: list[tuple[str, Any, str]] = [
    ("both params and size", {"params": [1.0], "size": 1}, "validation-error"),
    ("neither", {"dtype": "float32"}, "validation-error"),
    ("lr < 0", {"size": 1, "optimizer": {"lr": -0.001}}, "validation-error"),
    ("beta1 = 1", {"size": 1, "optimizer": {"betas": [1.0, 0.999]}}, "validation-error"),
    ("beta2 < 0", {"size": 1, "optimizer": {"betas": [0.9, -0.1]}}, "validation-error"),
    ("three betas", {"size": 1, "optimizer": {"betas": [0.9, 0.99, 0.999]}}, "validation-error"),
    ("eps = 0", {"size": 1, "optimizer": {"eps": 0}}, "validation-error"),
    ("weight_decay < 0", {"size": 1, "optimizer": {"weight_decay": -1}}, "validation-error"),
    ("lr as a string", {"size": 1, "optimizer": {"lr": "0.1"}}, "validation-error"),
    (
        "unknown optimizer field",
        {"size": 1, "optimizer": {"learning_rate": 0.1}},
        "validation-error",
    ),
    ("size 0", {"size": 0}, "validation-error"),
    ("size over the maximum", {"size": 10_001}, "validation-error"),
    ("size as a float", {"size": 1.5}, "validation-error"),
    ("unknown dtype", {"size": 1, "dtype": "int8"}, "validation-error"),
    ("init with params", {"params": [1.0], "init": {"kind": "zeros"}}, "validation-error"),
    ("unknown init", {"size": 1, "init": {"kind": "uniform"}}, "validation-error"),
    ("metadata not an object", {"size": 1, "metadata": [1]}, "validation-error"),
    ("params NaN via big number", {"params": [1e39]}, "non-finite-value"),
    ("params nested", {"params": [[1.0]]}, "invalid-vector"),
    ("params empty", {"params": []}, "invalid-vector"),
    ("not an object", [1, 2], "malformed-json"),
]


@pytest.mark.parametrize(
    ("body", "kind"), [c[1:] for c in BAD_CREATES], ids=[c[0] for c in BAD_CREATES]
)
def test_bad_creates_are_refused_and_create_nothing(
    client: TestClient, redis_client: redis.Redis, body: Any, kind: str
) -> None:
    response = client.post("/v1/sessions", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["type"] == ERRORS + kind
    assert redis_client.dbsize() == 0


def test_bad_patch_changes_nothing(client: TestClient, redis_client: redis.Redis) -> None:
    sid = create(client, size=2)["id"]
    before = snapshot(client, redis_client, sid)
    for body in [
        {"optimizer": {"lr": -1}},
        {"optimizer": {"betas": [0.9, 1.0]}},
        {"size": 3},
        {"optimizer": {"eps": "x"}},
    ]:
        response = client.patch(f"/v1/sessions/{sid}", json=body)
        assert response.status_code == 422
        assert response.json()["type"] == ERRORS + "validation-error"
    assert snapshot(client, redis_client, sid) == before


def test_unknown_sessions_and_routes_are_problems(client: TestClient) -> None:
    for path in ["/v1/sessions/s_" + "0" * 32, "/v1/sessions/not-an-id", "/v1/nothing"]:
        response = client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
    response = client.put("/v1/sessions")
    assert response.status_code == 405
    assert response.json()["type"] == ERRORS + "method-not-allowed"
    response = client.get("/v1/sessions", params={"limit": 0})
    assert response.status_code == 422
    assert response.json()["type"] == ERRORS + "validation-error"


def test_openapi_describes_binary_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    step = spec["paths"]["/v1/sessions/{session_id}/step"]["post"]
    assert set(step["requestBody"]["content"]) == {"application/json", BINARY}
    assert BINARY in step["responses"]["200"]["content"]
    put = spec["paths"]["/v1/sessions/{session_id}/params"]["put"]
    assert BINARY in put["requestBody"]["content"]
    get = spec["paths"]["/v1/sessions/{session_id}/params"]["get"]
    assert BINARY in get["responses"]["200"]["content"]
    assert client.get("/docs").status_code == 200


def test_health_and_readiness(client: TestClient, store_mode: dict[str, object]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {
        "status": "ready",
        "store": {**store_mode, "replica_acks": 0},
    }


def test_metrics_count_requests_steps_and_replays(client: TestClient) -> None:
    sid = create(client, size=3)["id"]
    for _ in range(2):
        client.post(
            f"/v1/sessions/{sid}/step",
            json={"gradient": [1, 2, 3]},
            headers={"Idempotency-Key": "m"},
        )
    client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1, 2]})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = "/v1/sessions/{session_id}/step"
    assert f'adamhub_http_requests_total{{method="POST",route="{route}",status="200"}} 2.0' in text
    assert f'adamhub_http_requests_total{{method="POST",route="{route}",status="422"}} 1.0' in text
    assert 'adamhub_steps_total{outcome="applied"} 1.0' in text
    assert 'adamhub_steps_total{outcome="replayed"} 1.0' in text
    assert "adamhub_cache_bytes 36.0" in text  # θ, m, v of 3 float32


@pytest.mark.parametrize("depth", [33, 254, 1000, 5000])
def test_deeply_nested_json_is_422_everywhere(
    client: TestClient, redis_client: redis.Redis, depth: int
) -> None:
    nested = b"[" * depth + b"]" * depth
    bodies = {
        "/v1/sessions": b'{"size": 1, "metadata": {"a": ' + nested + b"}}",
        "/v1/sessions?x": b'{"size": 1, "optimizer": ' + nested + b"}",
    }
    for path, body in bodies.items():
        response = client.post(
            path.split("?")[0], content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert redis_client.dbsize() == 0
    sid = create(client, size=1)["id"]
    for path in (f"/v1/sessions/{sid}", f"/v1/sessions/{sid}/step"):
        method = "PATCH" if path.endswith(sid) else "POST"
        body = b'{"metadata": {"a": ' + nested + b"}}" if method == "PATCH" else nested
        response = client.request(
            method, path, content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, response.text


def test_normal_init_that_is_not_finite_in_the_dtype_is_refused(
    client: TestClient, redis_client: redis.Redis
) -> None:
    response = client.post(
        "/v1/sessions", json={"size": 4, "init": {"kind": "normal", "mean": 1e39, "std": 1.0}}
    )
    assert response.status_code == 422
    assert response.json()["type"] == ERRORS + "validation-error"
    assert redis_client.dbsize() == 0


# -- rollback ---------------------------------------------------------------------------


def test_rollback_over_http_and_what_it_refuses(
    client: TestClient, redis_client: redis.Redis
) -> None:
    session = create(client, params=[1.0, 2.0, 3.0], history_steps=2)
    assert session["history_steps"] == 2
    sid = session["id"]
    seen = [params_of(client, sid)]
    for _ in range(3):
        step = client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0, -1.0, 0.5]})
        assert step.status_code == 200
        seen.append(params_of(client, sid))
    back = client.post(f"/v1/sessions/{sid}/rollback", json={"t": 1})
    assert back.status_code == 200, back.text
    assert back.json()["t"] == 1
    assert params_of(client, sid).tobytes() == seen[1].tobytes()
    before = snapshot(client, redis_client, sid)
    for body in ({"t": -1}, {"t": "1"}, {"t": 1.5}, {}, {"t": 1, "extra": 0}):
        refused = client.post(f"/v1/sessions/{sid}/rollback", json=body)
        assert refused.status_code == 422, body
        assert refused.json()["type"].endswith("/validation-error")
    ahead = client.post(f"/v1/sessions/{sid}/rollback", json={"t": 3})
    assert ahead.status_code == 409
    problem = ahead.json()
    assert problem["type"] == "https://adamhub.dev/errors/history-unavailable"
    assert problem["oldest_t"] == 0 and problem["t"] == 1
    assert snapshot(client, redis_client, sid) == before  # refusals change nothing
    patched = client.patch(f"/v1/sessions/{sid}", json={"history_steps": 50})
    assert patched.status_code == 200 and patched.json()["history_steps"] == 50
    assert client.patch(f"/v1/sessions/{sid}", json={"history_steps": None}).status_code == 422
    missing = client.post(f"/v1/sessions/s_{'0' * 32}/rollback", json={"t": 0})
    assert missing.status_code == 404


# -- param groups, schedules, clipping --------------------------------------------------


def test_param_groups_schedule_and_clipping_over_http(client: TestClient) -> None:
    optimizer = {
        "lr": 0.1,
        "weight_decay": 0.01,
        "decoupled_weight_decay": True,
        "schedule": {"kind": "warmup_linear", "warmup_steps": 2, "total_steps": 10,
                     "final_lr_ratio": 0.1},
        "max_grad_norm": 0.5,
    }  # fmt: skip
    groups = [{"size": 3}, {"size": 2, "lr": 0.01, "weight_decay": 0.0}]
    session = create(client, params=[1.0, 2.0, 3.0, 4.0, 5.0], optimizer=optimizer,
                     param_groups=groups)  # fmt: skip
    assert session["param_groups"] == groups
    assert session["optimizer"]["schedule"]["kind"] == "warmup_linear"
    sid = session["id"]
    config = AdamConfig(
        lr=0.1, weight_decay=0.01, decoupled_weight_decay=True,
        schedule=Schedule("warmup_linear", 2, 10, 0.1), max_grad_norm=0.5,
        param_groups=(ParamGroup(3), ParamGroup(2, lr=0.01, weight_decay=0.0)),
    )  # fmt: skip
    expected = init_state(np.arange(1.0, 6.0, dtype=np.float32), config)
    for n in range(4):
        grad = np.full(5, n + 1.0, np.float32)
        step = client.post(f"/v1/sessions/{sid}/step", content=grad.tobytes(),
                           headers={"Content-Type": BINARY, "Accept": BINARY})  # fmt: skip
        expected = adam_step(expected, grad, config)
        assert step.content == expected.params.tobytes()
    patched = client.patch(f"/v1/sessions/{sid}", json={
        "param_groups": [{}, {"lr": 0.5}], "optimizer": {"max_grad_norm": None}})  # fmt: skip
    assert patched.status_code == 200, patched.text
    assert patched.json()["param_groups"][1] == {"size": 2, "lr": 0.5, "weight_decay": 0.0}
    assert patched.json()["optimizer"]["max_grad_norm"] is None
    config = config.evolve(
        max_grad_norm=None, param_groups=(ParamGroup(3), ParamGroup(2, lr=0.5, weight_decay=0.0))
    )
    grad = np.full(5, 2.0, np.float32)
    step = client.post(f"/v1/sessions/{sid}/step", content=grad.tobytes(),
                       headers={"Content-Type": BINARY, "Accept": BINARY})  # fmt: skip
    assert step.content == adam_step(expected, grad, config).params.tobytes()
    for body in (
        {"size": 5, "param_groups": [{"size": 2}, {"size": 2}]},
        {"size": 5, "param_groups": []},
        {"size": 5, "param_groups": [{"size": 5, "amsgrad": True}]},
        {"size": 5, "optimizer": {"schedule": {"kind": "warmup_cosine", "warmup_steps": 5,
                                               "total_steps": 5}}},
        {"size": 5, "optimizer": {"max_grad_norm": 0}},
    ):  # fmt: skip
        refused = client.post("/v1/sessions", json=body)
        assert refused.status_code == 422, body
    wrong = client.patch(f"/v1/sessions/{sid}", json={"param_groups": [{}]})
    assert wrong.status_code == 422
    assert wrong.json()["type"].endswith("/validation-error")


def test_a_step_carries_settings_for_itself_and_the_steps_after(
    client: TestClient, redis_url: str
) -> None:
    session = create(client, params=[1.0, 2.0, 3.0, 4.0], param_groups=[{"size": 2}, {"size": 2}])
    sid = session["id"]
    config = AdamConfig(param_groups=(ParamGroup(2), ParamGroup(2)))
    expected = init_state(np.arange(1.0, 5.0, dtype=np.float32), config)
    headers = {"Content-Type": BINARY, "Accept": BINARY}
    for n in range(4):
        grad = np.full(4, n + 0.5, np.float32)
        carried = {}
        if n == 1:
            carried = {"Adamhub-Optimizer": '{"optimizer": {"lr": 0.05}}'}
            config = config.evolve(lr=0.05)
        if n == 3:
            carried = {"Adamhub-Optimizer": '{"param_groups": [{"lr": 0.2}, {}]}'}
            config = config.evolve(param_groups=(ParamGroup(2, lr=0.2), ParamGroup(2)))
        answer = client.post(f"/v1/sessions/{sid}/step", content=grad.tobytes(),
                             headers=headers | carried)  # fmt: skip
        assert answer.status_code == 200, answer.text
        expected = adam_step(expected, grad, config)
        assert answer.content == expected.params.tobytes()
    stored = client.get(f"/v1/sessions/{sid}").json()
    assert stored["optimizer"]["lr"] == 0.05
    assert stored["param_groups"] == [{"size": 2, "lr": 0.2}, {"size": 2}]
    # A process that never held the state rebuilds it from the log, settings included.
    with TestClient(create_app(Settings(redis_url=redis_url)), client=LOOPBACK) as other:
        rebuilt = other.get(f"/v1/sessions/{sid}/params", headers={"Accept": BINARY})
        assert rebuilt.content == expected.params.tobytes()
    for bad in ("not json", '{"optimizer": {"lr": -1}}', '{"param_groups": [{}]}', "[]"):
        refused = client.post(f"/v1/sessions/{sid}/step", content=grad.tobytes(),
                              headers=headers | {"Adamhub-Optimizer": bad})  # fmt: skip
        assert refused.status_code == 422, bad
    assert client.get(f"/v1/sessions/{sid}").json()["t"] == 4


def test_base_steps_are_checked_and_a_retry_of_an_applied_step_is_not_stale(
    client: TestClient,
) -> None:
    sid = create(client, size=2, max_staleness=0)["id"]
    body = {"gradient": [1.0, 1.0]}
    first = client.post(f"/v1/sessions/{sid}/step", json=body,
                        headers={"Adamhub-Base-Step": "0", "Idempotency-Key": "k0"})  # fmt: skip
    assert first.status_code == 200
    # The same request again (its answer lost): answered as applied, not as stale.
    retry = client.post(f"/v1/sessions/{sid}/step", json=body,
                        headers={"Adamhub-Base-Step": "0", "Idempotency-Key": "k0"})  # fmt: skip
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    for base, status in (("0", 409), ("5", 409), ("x", 422), ("-1", 422), ("1", 200)):
        answer = client.post(f"/v1/sessions/{sid}/step", json=body,
                             headers={"Adamhub-Base-Step": base})  # fmt: skip
        assert answer.status_code == status, (base, answer.text)
        if status == 409:
            assert answer.json()["type"].endswith("/stale-gradient")
            assert answer.json()["t"] == 1
    assert client.get(f"/v1/sessions/{sid}").json()["t"] == 2
    patched = client.patch(f"/v1/sessions/{sid}", json={"max_staleness": None})
    assert patched.status_code == 200 and patched.json()["max_staleness"] is None
    old = client.post(f"/v1/sessions/{sid}/step", json=body, headers={"Adamhub-Base-Step": "0"})
    assert old.status_code == 200


def test_params_long_poll_answers_when_t_arrives_not_at_its_timeout(
    client: TestClient, redis_url: str
) -> None:
    sid = create(client, size=2)["id"]

    # Another process steps the session 0.3 s from now: the waiter must wake then.
    def step_elsewhere() -> None:
        time.sleep(0.3)
        with TestClient(create_app(Settings(redis_url=redis_url)), client=LOOPBACK) as other:
            other.post(f"/v1/sessions/{sid}/step", json={"gradient": [1.0, 1.0]})

    thread = threading.Thread(target=step_elsewhere)
    start = time.monotonic()
    thread.start()
    answer = client.get(f"/v1/sessions/{sid}/params?min_step=1&wait=20")
    waited = time.monotonic() - start
    thread.join()
    assert answer.status_code == 200 and answer.json()["t"] == 1
    assert 0.25 <= waited < 5, waited
    # Not reached within the wait: the current parameters, after it.
    start = time.monotonic()
    late = client.get(f"/v1/sessions/{sid}/params?min_step=5&wait=0.5")
    assert late.status_code == 200 and late.json()["t"] == 1
    assert 0.45 <= time.monotonic() - start < 3
    # Already reached: at once.
    assert client.get(f"/v1/sessions/{sid}/params?min_step=1&wait=60").json()["t"] == 1
    for query in ("min_step=-1&wait=1", "min_step=1&wait=-1", "min_step=1&wait=301"):
        assert client.get(f"/v1/sessions/{sid}/params?{query}").status_code == 422, query


# -- finding sessions -------------------------------------------------------------------


def test_list_filters_by_name_and_orders_by_last_update(client: TestClient) -> None:
    ids = {name: create(client, size=1, name=name)["id"] for name in ("bert-a", "Bert-b", "gpt")}
    create(client, size=1)  # unnamed
    client.post(f"/v1/sessions/{ids['bert-a']}/step", json={"gradient": [1.0]})
    by_update = client.get("/v1/sessions", params={"order": "-updated_at"}).json()["sessions"]
    assert by_update[0]["id"] == ids["bert-a"]
    assert [s["name"] for s in client.get("/v1/sessions?name=bert").json()["sessions"]] == [
        "bert-a",
        "Bert-b",
    ]
    globbed = client.get("/v1/sessions", params={"name": "*-b", "order": "-created_at"})
    assert [s["id"] for s in globbed.json()["sessions"]] == [ids["Bert-b"]]
    first = client.get("/v1/sessions", params={"name": "?", "limit": 1}).json()
    assert first["sessions"] == [] and first["next_cursor"] is None
    page = client.get("/v1/sessions", params={"order": "-created_at", "limit": 2}).json()
    rest = client.get(
        "/v1/sessions", params={"order": "-created_at", "limit": 2, "cursor": page["next_cursor"]}
    ).json()
    assert [s["name"] for s in page["sessions"] + rest["sessions"]] == [
        None, "gpt", "Bert-b", "bert-a"
    ]  # fmt: skip
    assert rest["next_cursor"] is None
    assert client.get("/v1/sessions?order=name").status_code == 422


def test_sessions_idle_past_their_time_are_deleted(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)
    app = create_app(settings)
    with TestClient(app, client=LOOPBACK) as client:
        keep = create(client, size=2)
        busy = create(client, size=2, expires_after_idle_seconds=60)
        idle = create(client, size=2, expires_after_idle_seconds=60)
        assert client.get(f"/v1/sessions/{idle['id']}").json()["expires_after_idle_seconds"] == 60
        janitor: Janitor = app.state.janitor
        later = datetime.now(UTC) + timedelta(seconds=61)
        client.post(f"/v1/sessions/{busy['id']}/step", json={"gradient": [1.0, 1.0]})
        # Stepped now: 61 s later it has been idle 61 s too; 30 s later it has not.
        portal = client.portal
        assert portal is not None
        assert portal.call(janitor.sweep, datetime.now(UTC) + timedelta(seconds=30)) == []
        assert portal.call(janitor.sweep, later) == sorted([busy["id"], idle["id"]])
        assert client.get(f"/v1/sessions/{idle['id']}").status_code == 404
        assert client.get(f"/v1/sessions/{keep['id']}").status_code == 200
        assert client.patch(f"/v1/sessions/{keep['id']}",
                            json={"expires_after_idle_seconds": 59}).status_code == 422  # fmt: skip
