"""Keys, tenants, quotas, rate limits and the front door, in process, on a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.testing import LOOPBACK

ERRORS = "https://adamhub.dev/errors/"
MASTER = "master-key-0123456789abcdef"
BINARY = "application/octet-stream"


@contextmanager
def service(redis_url: str, **settings: Any) -> Iterator[TestClient]:
    with TestClient(
        create_app(Settings(redis_url=redis_url, **settings)), client=LOOPBACK
    ) as client:
        yield client


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with service(redis_url, master_key=MASTER) as test_client:
        yield test_client


def make_key(client: TestClient, **body: Any) -> str:
    response = client.post("/v1/keys", json=body, headers=auth(MASTER))
    assert response.status_code == 201, response.text
    secret: str = response.json()["key"]
    return secret


def new_session(client: TestClient, secret: str, size: int = 3) -> str:
    response = client.post("/v1/sessions", json={"size": size}, headers=auth(secret))
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    return session_id


def problem_type(response: Any) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    kind: str = response.json()["type"]
    return kind.removeprefix(ERRORS)


# -- protected mode -----------------------------------------------------------------------


def test_without_a_master_key_only_loopback_clients_are_served(redis_url: str) -> None:
    app = create_app(Settings(redis_url=redis_url))
    with TestClient(app, client=("127.0.0.1", 5000)) as local:
        assert local.post("/v1/sessions", json={"size": 2}).status_code == 201
        assert local.get("/metrics").status_code == 200
    with TestClient(app, client=("10.1.2.3", 5000)) as remote:
        for method, path in [("GET", "/v1/sessions"), ("POST", "/v1/keys"), ("GET", "/metrics")]:
            response = remote.request(method, path)
            assert response.status_code == 403
            assert problem_type(response) == "protected-mode"
            assert "ADAMHUB_MASTER_KEY" in response.json()["detail"]
        assert remote.get("/healthz").status_code == 200
        assert remote.get("/readyz").status_code == 200


# -- keys -----------------------------------------------------------------------------------


def test_every_v1_request_needs_a_known_key(client: TestClient) -> None:
    for headers in [{}, auth("nope"), {"Authorization": "Basic abc"}, auth("")]:
        response = client.get("/v1/sessions", headers=headers)
        assert response.status_code == 401
        assert problem_type(response) == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/v1/sessions", headers=auth(MASTER)).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=auth(MASTER)).status_code == 200


def test_keys_are_shown_once_stored_hashed_and_revoked(
    client: TestClient, redis_client: redis.Redis
) -> None:
    response = client.post(
        "/v1/keys",
        json={"tenant": "acme", "actions": ["*"], "description": "ci"},
        headers=auth(MASTER),
    )
    assert response.status_code == 201
    made = response.json()
    secret, key_id = made["key"], made["id"]
    assert response.headers["location"] == f"/v1/keys/{key_id}"
    assert made["tenant"] == "acme" and made["sessions"] == ["*"] and made["expires_at"] is None
    # The secret is never stored nor shown again.
    dump = repr([(k, redis_client.dump(k)) for k in redis_client.keys("*")])
    assert secret not in dump
    assert len(redis_client.keys("adamhub:{keys}:key:*")) == 1
    shown = client.get(f"/v1/keys/{key_id}", headers=auth(MASTER)).json()
    assert "key" not in shown and shown["id"] == key_id
    listed = client.get("/v1/keys", headers=auth(MASTER)).json()["keys"]
    assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]
    assert client.get("/v1/sessions", headers=auth(secret)).status_code == 200
    assert client.delete(f"/v1/keys/{key_id}", headers=auth(MASTER)).status_code == 204
    refused_within_a_second(lambda: client.get("/v1/sessions", headers=auth(secret)).status_code)
    assert client.get(f"/v1/keys/{key_id}", headers=auth(MASTER)).status_code == 404
    assert client.delete(f"/v1/keys/{key_id}", headers=auth(MASTER)).status_code == 404


def test_a_revoked_key_is_refused_by_every_replica_within_a_second(redis_url: str) -> None:
    with service(redis_url, master_key=MASTER) as one, service(redis_url, master_key=MASTER) as two:
        made = one.post("/v1/keys", json={"tenant": "acme"}, headers=auth(MASTER)).json()
        for replica in (one, two):  # both have checked (and cached) the key
            assert replica.get("/v1/sessions", headers=auth(made["key"])).status_code == 200
        assert one.delete(f"/v1/keys/{made['id']}", headers=auth(MASTER)).status_code == 204
        secret = made["key"]
        refused_within_a_second(lambda: two.get("/v1/sessions", headers=auth(secret)).status_code)


def refused_within_a_second(status: Callable[[], int]) -> None:
    """Poll a just-revoked key until it is refused: no request sent a second or more after
    the revocation may still be let in. Timed by when each request is sent, not when its
    answer comes, so a slow machine cannot fail it."""
    revoked = time.monotonic()
    while True:
        sent = time.monotonic()
        if status() == 401:
            return
        assert sent - revoked < 1.0, "a revoked key still works a second later"
        time.sleep(0.02)


def test_an_expired_key_is_refused(client: TestClient) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    secret = make_key(client, tenant="acme", expires_at=soon)
    assert client.get("/v1/sessions", headers=auth(secret)).status_code == 200
    time.sleep(1.6)
    response = client.get("/v1/sessions", headers=auth(secret))
    assert response.status_code == 401


BAD_KEYS: list[dict[str, Any]] = [
    {"tenant": "acme", "actions": ["sessions.fly"]},
    {"tenant": "acme", "actions": []},
    {"tenant": "no spaces"},
    {"tenant": "acme", "sessions": ["not-a-session"]},
    {"tenant": "acme", "expires_at": "tomorrow"},
    {"tenant": "acme", "expires_at": "2030-01-01T00:00:00"},  # no time zone
    {"tenant": "acme", "secret": "mine"},
]


@pytest.mark.parametrize("body", BAD_KEYS)
def test_bad_key_requests_are_422_and_make_nothing(
    client: TestClient, redis_client: redis.Redis, body: dict[str, Any]
) -> None:
    response = client.post("/v1/keys", json=body, headers=auth(MASTER))
    assert response.status_code == 422, response.text
    assert redis_client.keys("adamhub:{keys}:*") == []


# -- tenants and actions --------------------------------------------------------------------


def test_another_tenants_session_is_exactly_an_unknown_one(client: TestClient) -> None:
    acme, other = make_key(client, tenant="acme"), make_key(client, tenant="other")
    mine = new_session(client, acme)
    theirs = new_session(client, other)
    unknown = "s_" + "0" * 32
    for path in ["", "/params", "/history", "/events", "/checkpoint"]:
        seen = client.get(f"/v1/sessions/{theirs}{path}", headers=auth(acme))
        absent = client.get(f"/v1/sessions/{unknown}{path}", headers=auth(acme))
        assert seen.status_code == absent.status_code == 404
        assert problem_type(seen) == problem_type(absent) == "session-not-found"
        assert set(seen.json()) == set(absent.json())
    step = client.post(
        f"/v1/sessions/{theirs}/step", json={"gradient": [1, 2, 3]}, headers=auth(acme)
    )
    assert step.status_code == 404
    assert client.delete(f"/v1/sessions/{theirs}", headers=auth(acme)).status_code == 404
    patch = client.patch(f"/v1/sessions/{theirs}", json={"name": "x"}, headers=auth(acme))
    assert patch.status_code == 404
    for method, path, body in [
        ("POST", f"/v1/sessions/{theirs}/param_groups", {"params": [1.0]}),
        ("DELETE", f"/v1/sessions/{theirs}/quarantine/w", None),
    ]:
        refused = client.request(method, path, json=body, headers=auth(acme))
        assert refused.status_code == 404 and problem_type(refused) == "session-not-found"
    assert client.get(f"/v1/sessions/{theirs}", headers=auth(other)).json()["size"] == 3
    listed = client.get("/v1/sessions", headers=auth(acme)).json()["sessions"]
    assert [s["id"] for s in listed] == [mine]
    for secret, sid in ((acme, mine), (other, theirs)):
        named = client.patch(f"/v1/sessions/{sid}", json={"name": "team-run"}, headers=auth(secret))
        assert named.status_code == 200
    for query in ("?order=-updated_at", "?name=team-*", "?name=run"):
        found = client.get(f"/v1/sessions{query}", headers=auth(acme)).json()["sessions"]
        assert [s["id"] for s in found] == [mine], query
    # The master key is tenant "default": it sees neither.
    assert client.get("/v1/sessions", headers=auth(MASTER)).json()["sessions"] == []
    assert client.get(f"/v1/sessions/{theirs}", headers=auth(other)).status_code == 200


def test_a_worker_key_steps_and_reads_its_session_and_nothing_else(client: TestClient) -> None:
    acme = make_key(client, tenant="acme")
    sid, sibling = new_session(client, acme), new_session(client, acme)
    worker = make_key(
        client, tenant="acme", actions=["steps.create", "params.read"], sessions=[sid]
    )
    step = client.post(
        f"/v1/sessions/{sid}/step", json={"gradient": [1, 2, 3]}, headers=auth(worker)
    )
    assert step.status_code == 200 and step.json()["t"] == 1
    assert client.get(f"/v1/sessions/{sid}/params", headers=auth(worker)).status_code == 200
    for method, path, body in [
        ("GET", f"/v1/sessions/{sid}", None),
        ("GET", f"/v1/sessions/{sid}/history", None),
        ("GET", f"/v1/sessions/{sid}/events", None),
        ("PATCH", f"/v1/sessions/{sid}", {"name": "x"}),
        ("PUT", f"/v1/sessions/{sid}/params", {"params": [1, 2, 3]}),
        ("DELETE", f"/v1/sessions/{sid}", None),
        ("POST", f"/v1/sessions/{sid}/param_groups", {"params": [1.0]}),
        ("DELETE", f"/v1/sessions/{sid}/quarantine/w", None),
        ("POST", "/v1/sessions", {"size": 2}),
        ("GET", "/v1/sessions", None),
        ("GET", "/v1/keys", None),
        ("GET", "/metrics", None),
    ]:
        response = client.request(method, path, json=body, headers=auth(worker))
        assert response.status_code == 403, (method, path, response.text)
        assert problem_type(response) == "forbidden"
    for path in [f"/v1/sessions/{sibling}/params", f"/v1/sessions/{sibling}"]:
        assert client.get(path, headers=auth(worker)).status_code == 404
    assert client.get(f"/v1/sessions/{sid}", headers=auth(acme)).json()["t"] == 1


def test_a_key_manager_manages_its_own_tenants_keys_only(client: TestClient) -> None:
    manager = make_key(client, tenant="acme", actions=["keys.manage"])
    make_key(client, tenant="other")
    response = client.post("/v1/keys", json={"tenant": "other"}, headers=auth(manager))
    assert response.status_code == 403
    made = client.post("/v1/keys", json={"actions": ["steps.create"]}, headers=auth(manager))
    assert made.status_code == 201 and made.json()["tenant"] == "acme"
    tenants = {k["tenant"] for k in client.get("/v1/keys", headers=auth(manager)).json()["keys"]}
    assert tenants == {"acme"}
    everyone = client.get("/v1/keys", headers=auth(MASTER)).json()["keys"]
    other_id = next(k["id"] for k in everyone if k["tenant"] == "other")
    assert client.delete(f"/v1/keys/{other_id}", headers=auth(manager)).status_code == 404


# -- quotas and rate limits -----------------------------------------------------------------


def test_tenant_quotas_count_sessions_and_parameters(redis_url: str) -> None:
    with service(
        redis_url, master_key=MASTER, tenant_max_sessions=2, tenant_max_parameters=100
    ) as client:
        acme = make_key(client, tenant="acme")
        first = new_session(client, acme, size=60)
        over = client.post("/v1/sessions", json={"size": 41}, headers=auth(acme))
        assert over.status_code == 403 and problem_type(over) == "quota-exceeded"
        assert (over.json()["limit"], over.json()["current"]) == (100, 60)
        new_session(client, acme, size=40)
        third = client.post("/v1/sessions", json={"size": 1}, headers=auth(acme))
        assert third.status_code == 403
        assert (third.json()["limit"], third.json()["current"]) == (2, 2)
        # Another tenant has quotas of its own; a deleted session frees its share.
        new_session(client, make_key(client, tenant="other"), size=100)
        assert client.delete(f"/v1/sessions/{first}", headers=auth(acme)).status_code == 204
        new_session(client, acme, size=60)


def test_rate_limits_are_per_key_and_shared_by_replicas(redis_url: str) -> None:
    limits = {"master_key": MASTER, "rate_limit": 0.5, "rate_limit_burst": 3}
    with service(redis_url, **limits) as one, service(redis_url, **limits) as two:
        acme = make_key(one, tenant="acme")
        statuses = [
            replica.get("/v1/sessions", headers=auth(acme)).status_code
            for replica in (one, two, one, two)
        ]
        assert statuses == [200, 200, 200, 429]
        refused = two.get("/v1/sessions", headers=auth(acme))
        assert problem_type(refused) == "rate-limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        assert refused.headers["ratelimit-policy"] == '"per-key";q=3;w=6'
        assert refused.headers["ratelimit"].startswith('"per-key";r=0;t=')
        # Another key has a bucket of its own.
        assert one.get("/v1/sessions", headers=auth(make_key(one, tenant="b"))).status_code == 200


# -- idempotent creates and deletes ---------------------------------------------------------


def test_a_create_with_an_idempotency_key_makes_one_session(
    client: TestClient, redis_client: redis.Redis
) -> None:
    headers = {**auth(MASTER), "Idempotency-Key": "create-1"}
    first = client.post("/v1/sessions", json={"size": 3, "name": "a"}, headers=headers)
    again = client.post("/v1/sessions", json={"size": 3, "name": "a"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["id"] == again.json()["id"]
    assert len(client.get("/v1/sessions", headers=auth(MASTER)).json()["sessions"]) == 1
    other = client.post("/v1/sessions", json={"size": 4}, headers=headers)
    assert other.status_code == 422 and problem_type(other) == "idempotency-key-reused"
    assert len(redis_client.keys("adamhub:{*}:meta")) == 1


def test_delete_removes_the_idempotency_records(
    client: TestClient, redis_client: redis.Redis
) -> None:
    sid = new_session(client, MASTER)
    for i in range(3):
        headers = {**auth(MASTER), "Idempotency-Key": f"k{i}"}
        client.post(f"/v1/sessions/{sid}/step", json={"gradient": [1, 2, 3]}, headers=headers)
    assert len(redis_client.keys(f"adamhub:{{{sid}}}:idem:*")) == 3
    assert client.delete(f"/v1/sessions/{sid}", headers=auth(MASTER)).status_code == 204
    assert redis_client.keys(f"adamhub:{{{sid}}}:*") == []


# -- the front door -------------------------------------------------------------------------


def test_hosts_outside_the_allow_list_are_refused(redis_url: str) -> None:
    with service(redis_url, allowed_hosts=["localhost", "127.0.0.1", "::1"]) as client:
        for host in ["localhost", "localhost:8000", "127.0.0.1:9", "[::1]:8000"]:
            assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ["evil.example", "evil.example:8000", "localhost.evil.example"]:
            response = client.get("/v1/sessions", headers={"Host": host})
            assert response.status_code == 400, host
            assert problem_type(response) == "host-not-allowed"


def test_options_answers_the_methods_a_path_takes(client: TestClient) -> None:
    sid = new_session(client, MASTER)
    cases = {
        f"/v1/sessions/{sid}": "DELETE, GET, HEAD, OPTIONS, PATCH",
        f"/v1/sessions/{sid}/params": "GET, HEAD, OPTIONS, PUT",
        f"/v1/sessions/{sid}/step": "OPTIONS, POST",
        "/v1/sessions": "GET, HEAD, OPTIONS, POST",
    }
    for path, allow in cases.items():
        response = client.options(path)
        assert response.status_code == 204, path
        assert response.headers["allow"] == allow
    assert client.options("/v1/nothing").status_code == 404
    # A 405 names every method of the path too, not only those of one route.
    refused = client.put(f"/v1/sessions/{sid}", headers=auth(MASTER))
    assert refused.status_code == 405
    assert refused.headers["allow"] == cases[f"/v1/sessions/{sid}"]


def test_errors_never_name_internal_addresses(redis_url: str) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    with service("redis://127.0.0.1:1/0", redis_timeout_seconds=0.5) as client:
        response = client.get("/v1/sessions")
        assert response.status_code == 503
        assert "127.0.0.1" not in response.text and ":1" not in response.json()["detail"]
    assert port  # the real store's address is not in any answer either


@pytest.mark.standalone_only
def test_a_store_out_of_memory_is_503_and_changes_nothing(
    client: TestClient, redis_client: redis.Redis
) -> None:
    sid = new_session(client, MASTER, size=100_000)
    before = redis_client.hget(f"adamhub:{{{sid}}}:meta", "rev")
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", int(redis_client.info("memory")["used_memory"]) + 100_000)
    try:
        gradient = np.ones(100_000, np.float32).tobytes()
        headers = {**auth(MASTER), "Content-Type": BINARY}
        for _ in range(3):
            response = client.post(f"/v1/sessions/{sid}/step", content=gradient, headers=headers)
            assert response.status_code == 503, response.text
            assert problem_type(response) == "store-unavailable"
            assert "retry-after" in response.headers
        created = client.post("/v1/sessions", json={"size": 100_000}, headers=auth(MASTER))
        assert created.status_code == 503
    finally:
        redis_client.config_set("maxmemory", 0)
    assert redis_client.hget(f"adamhub:{{{sid}}}:meta", "rev") == before
    step = client.post(f"/v1/sessions/{sid}/step", content=gradient, headers=headers)
    assert step.status_code == 200 and step.headers["adamhub-applied-step"] == "1"
