"""Acknowledged writes (ADAMHUB_REPLICA_ACKS): a step is answered only once a replica of
the store holds it, and a 503 outcome-unknown (never a success) when none confirms in
time; a real primary and replica."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.testing import LOOPBACK, StoreServer

# About one Redis: its own replica / an earlier version's key names (a cluster never held them).
pytestmark = pytest.mark.standalone_only

BINARY = "application/octet-stream"
ERRORS = "https://adamhub.dev/errors/"


@pytest.fixture(scope="module")
def primary_and_replica() -> Iterator[tuple[StoreServer, StoreServer]]:
    primary = StoreServer("--repl-diskless-sync-delay", "0").start()
    replica = StoreServer("--replicaof", "127.0.0.1", str(primary.port)).start()
    try:
        with redis.Redis(port=primary.port) as watching:
            deadline = time.monotonic() + 20
            while watching.info("replication").get("slave0", {}).get("state") != "online":
                assert time.monotonic() < deadline, "the replica did not come online"
                time.sleep(0.05)
        yield primary, replica
    finally:
        replica.cleanup()
        primary.cleanup()


def client_of(primary: StoreServer, replicas: int) -> TestClient:
    settings = Settings(
        redis_url=primary.url, replica_acks=replicas, replica_ack_timeout_seconds=0.5
    )
    return TestClient(create_app(settings), client=LOOPBACK)


def step(client: TestClient, session_id: str, key: str) -> tuple[int, dict[str, str], bytes]:
    answer = client.post(
        f"/v1/sessions/{session_id}/step",
        content=np.ones(4, np.float32).tobytes(),
        headers={"Content-Type": BINARY, "Accept": BINARY, "Idempotency-Key": key},
    )
    return answer.status_code, dict(answer.headers), answer.content


def test_a_step_is_answered_once_the_replica_holds_it(
    primary_and_replica: tuple[StoreServer, StoreServer],
) -> None:
    primary, replica = primary_and_replica
    with client_of(primary, 1) as client, redis.Redis(port=replica.port) as on_replica:
        ready = client.get("/readyz").json()
        assert ready["store"] == {
            "mode": "standalone",
            "primaries": 1,
            "replicas": 1,
            "replica_acks": 1,
        }
        session_id = client.post("/v1/sessions", json={"size": 4}).json()["id"]
        for t in range(1, 4):
            status, _, _ = step(client, session_id, f"k{t}")
            assert status == 200
            # Read at once, no waiting: the replica had it before the answer.
            assert on_replica.hget(f"adamhub:{{{session_id}}}:meta", "t") == str(t).encode()


def test_without_the_replicas_confirmation_the_answer_is_outcome_unknown_and_a_retry_counts_once(
    primary_and_replica: tuple[StoreServer, StoreServer],
) -> None:
    primary, replica = primary_and_replica
    assert replica.process is not None
    with client_of(primary, 1) as client:
        session_id = client.post("/v1/sessions", json={"size": 4}).json()["id"]
        assert step(client, session_id, "first")[0] == 200
        replica.process.send_signal(signal.SIGSTOP)
        try:
            status, _, body = step(client, session_id, "second")
            assert status == 503
            assert f'"type":"{ERRORS}outcome-unknown"'.encode() in body.replace(b" ", b"")
            assert client.get("/readyz").status_code == 200  # the primary answers
        finally:
            replica.process.send_signal(signal.SIGCONT)
        # The write is on the primary: the retry is answered as applied, once.
        status, headers, _ = step(client, session_id, "second")
        assert status == 200
        assert headers["idempotent-replayed"] == "true"
        assert headers["adamhub-applied-step"] == "2"
        assert client.get(f"/v1/sessions/{session_id}").json()["t"] == 2


def test_without_replica_acks_nothing_waits_for_replicas(
    primary_and_replica: tuple[StoreServer, StoreServer],
) -> None:
    primary, replica = primary_and_replica
    assert replica.process is not None
    with client_of(primary, 0) as client:
        assert client.get("/readyz").json()["store"]["replica_acks"] == 0
        session_id = client.post("/v1/sessions", json={"size": 4}).json()["id"]
        replica.process.send_signal(signal.SIGSTOP)
        try:
            assert step(client, session_id, "alone")[0] == 200
        finally:
            replica.process.send_signal(signal.SIGCONT)
