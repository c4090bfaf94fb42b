"""adamhub on a real Redis Cluster: a primary killed while workers step loses no
acknowledged step (``--replica-acks 1``, a replica per primary), for plain steps and for
rounds; slots move while workers step; the `keys` command works on a cluster."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

import adamhub
from adamhub_service.optim import AdamConfig, adam_step, init_state
from adamhub_service.testing import SERVICE_COMMAND, ServiceProcess, StoreCluster

SIZE = 1000
CONFIG = AdamConfig(lr=0.01)


@pytest.fixture
def cluster() -> Iterator[StoreCluster]:
    """Three primaries, each with one replica."""
    started = StoreCluster(primaries=3, replicas=1).start()
    try:
        yield started
    finally:
        started.cleanup()


def acknowledging_service(cluster: StoreCluster, tmp_path: Path) -> ServiceProcess:
    """The service on the cluster; a write is acknowledged once a replica holds it. Its
    sessions are spread (100 elements a chunk: ten chunks, on every primary), so the
    primary that dies holds some chunks of every session."""
    return ServiceProcess(
        "--redis-url", cluster.url, "--redis-cluster", "--replica-acks", "1",
        env={
            "ADAMHUB_REPLICA_ACK_TIMEOUT_SECONDS": "1",
            "ADAMHUB_REDIS_TIMEOUT_SECONDS": "1",
            "ADAMHUB_CHUNK_ELEMENTS": "100",
        },
        log_path=tmp_path / "service.log",
    ).start()  # fmt: skip


def patient_client(base_url: str) -> adamhub.Client:
    """The SDK, with retries enough to ride out a failover (about 20 s)."""
    return adamhub.Client(
        base_url, timeout=30, max_retries=40, initial_retry_delay=0.05, max_retry_delay=0.5
    )


def gradient(worker: int, index: int) -> np.ndarray:
    return np.random.default_rng([worker, index]).normal(size=SIZE).astype(np.float32)


def fail_over(cluster: StoreCluster, session_id: str) -> float:
    """kill -9 the primary of the session's slot; once its replica has taken over, bring
    the old primary back (it rejoins as the new primary's replica, so that writes can be
    confirmed again). When the kill happened (monotonic)."""
    primary = cluster.node_serving(f"adamhub:{{{session_id}}}:meta")
    killed_at = time.monotonic()
    primary.kill()
    deadline = time.monotonic() + 30
    while cluster.node_serving_or_none(f"adamhub:{{{session_id}}}:meta") is None:
        assert time.monotonic() < deadline, "no replica took over"
        time.sleep(0.1)
    primary.start()
    cluster.wait_until_ok()
    return killed_at


def test_a_primary_killed_while_a_worker_steps_loses_no_acknowledged_step(
    cluster: StoreCluster, tmp_path: Path
) -> None:
    service = acknowledging_service(cluster, tmp_path)
    steps, kill_after = 120, 40
    acknowledged: list[tuple[int, float]] = []  # (applied t, when)
    try:
        with patient_client(service.base_url) as client:
            session = client.create_session(size=SIZE, optimizer={"lr": 0.01})
            with redis.RedisCluster.from_url(cluster.url) as store:
                assert store.hget(f"adamhub:{{{session.id}}}:meta", "spread") == b"1"
            for index in range(steps):
                if index == kill_after:
                    killed_at = fail_over(cluster, session.id)
                session.step(gradient(0, index))
                assert session.last_applied_t is not None
                acknowledged.append((session.last_applied_t, time.monotonic()))
            session.refresh()
            assert session.t == steps
            params = session.params()
    finally:
        service.stop()
    assert [t for t, _ in acknowledged] == list(range(1, steps + 1)), "lost or applied twice"
    state = init_state(np.zeros(SIZE, np.float32), CONFIG)
    for index in range(steps):
        state = adam_step(state, gradient(0, index), CONFIG)
    assert params.tobytes() == state.params.tobytes()
    resumed = acknowledged[kill_after][1] - killed_at
    print(f"steps resumed {resumed:.1f} s after the primary was killed")
    assert resumed < 30


def test_a_primary_killed_mid_rounds_loses_no_acknowledged_contribution(
    cluster: StoreCluster, tmp_path: Path
) -> None:
    service = acknowledging_service(cluster, tmp_path)
    workers, rounds, kill_after = 2, 30, 10
    with patient_client(service.base_url) as client:
        session_id = client.create_session(
            size=SIZE, dtype="float64", optimizer={"lr": 0.01}, rounds={"contributions": workers}
        ).id
    answers: list[list[tuple[int, bytes]]] = [[] for _ in range(workers)]
    # Worker 0 stops before its contribution to round `kill_after` until the test has
    # killed the primary: worker 1's contribution to that round is in, waiting.
    reached = threading.Barrier(2)
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with patient_client(service.base_url) as client:
                session = client.session(session_id)
                for round_ in range(rounds):
                    if round_ == kill_after and worker == 0:
                        reached.wait(60)
                        reached.wait(60)
                    params = session.step(gradient(worker, round_).astype(np.float64))
                    assert session.last_applied_t is not None
                    answers[worker].append((session.last_applied_t, params.tobytes()))
        except BaseException as exc:
            failures.append(exc)
            reached.abort()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    try:
        for thread in threads:
            thread.start()
        reached.wait(60)
        time.sleep(0.5)  # worker 1's contribution arrives and waits for worker 0's
        fail_over(cluster, session_id)
        reached.wait(60)
        for thread in threads:
            thread.join(120)
    finally:
        service.stop()
    assert not failures, failures
    state = init_state(np.zeros(SIZE), CONFIG)
    for round_ in range(rounds):
        mean = np.mean([gradient(w, round_).astype(np.float64) for w in range(workers)], axis=0)
        state = adam_step(state, mean, CONFIG)
        got = {answers[w][round_] for w in range(workers)}
        assert len(got) == 1, f"workers disagree at round {round_}"
        applied_t, params = got.pop()
        assert applied_t == round_ + 1
        assert np.abs(np.frombuffer(params) - state.params).max() <= 1e-12


def steps_through(
    base_url: str, session_id: str, worker: int, applied: list[int], stop: threading.Event
) -> None:
    """Step through the SDK until ``stop``; the applied t of each step is appended to
    ``applied`` as it comes."""
    with patient_client(base_url) as client:
        session = client.session(session_id)
        while not stop.is_set():
            session.step(gradient_of(session.size, worker, len(applied)))
            assert session.last_applied_t is not None
            applied.append(session.last_applied_t)


def gradient_of(size: int, worker: int, index: int) -> np.ndarray:
    return np.random.default_rng([size, worker, index]).normal(size=size).astype(np.float32)


def test_slots_move_while_four_workers_step_1k_and_1m_sessions(tmp_path: Path) -> None:
    """Resharding under load: every slot of the primary that holds a 1M session moves to
    another primary, and back, while 4 workers step it and three 1k sessions."""
    # A primary that gives away its last slot stays a primary (and takes them back).
    cluster = StoreCluster(3, 0, "--cluster-allow-replica-migration", "no").start()
    service = ServiceProcess(
        "--redis-url", cluster.url, "--redis-cluster", log_path=tmp_path / "service.log"
    ).start()
    sizes = [1_000_000, 1_000, 1_000, 1_000]
    try:
        with patient_client(service.base_url) as client:
            ids = [client.create_session(size=size, optimizer={"lr": 0.01}).id for size in sizes]
        results: list[list[int]] = [[] for _ in sizes]
        failures: list[BaseException] = []
        stop = threading.Event()

        def work(worker: int) -> None:
            try:
                steps_through(service.base_url, ids[worker], worker, results[worker], stop)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(len(sizes))]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        source = cluster.node_serving(f"adamhub:{{{ids[0]}}}:meta")
        target = next(node for node in cluster.nodes if node is not source)
        slots = cluster.slots_of(source)
        before = [len(applied) for applied in results]
        cluster.move_slots(source, target, slots)
        assert cluster.node_serving(f"adamhub:{{{ids[0]}}}:meta") is target
        cluster.move_slots(target, source, slots)
        after = [len(applied) for applied in results]
        # Every session was stepped while its slots moved.
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
        time.sleep(0.5)  # and after
        stop.set()
        for thread in threads:
            thread.join(300)
        assert not failures, failures
        with patient_client(service.base_url) as client:
            for worker, (size, session_id) in enumerate(zip(sizes, ids, strict=True)):
                steps = len(results[worker])
                assert results[worker] == list(range(1, steps + 1)), "lost or applied twice"
                state = init_state(np.zeros(size, np.float32), CONFIG)
                for index in range(steps):
                    state = adam_step(state, gradient_of(size, worker, index), CONFIG)
                assert client.session(session_id).params().tobytes() == state.params.tobytes()
    finally:
        service.stop()
        cluster.cleanup()


def test_the_keys_command_manages_keys_on_a_cluster(tmp_path: Path) -> None:
    """`adamhub-service keys … --redis-cluster`: a key made there works on a service of
    the cluster, and revoked there it is refused."""
    cluster = StoreCluster(primaries=3).start()
    master = "cluster-master-key-0123456789abcdef"
    service = ServiceProcess(
        "--redis-url", cluster.url, "--redis-cluster",
        env={"ADAMHUB_MASTER_KEY": master}, log_path=tmp_path / "service.log",
    ).start()  # fmt: skip

    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*SERVICE_COMMAND, "keys", *args, "--redis-url", cluster.url, "--redis-cluster"]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    try:
        made = keys("create", "--tenant", "acme")
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip()
        listed = keys("list")
        assert listed.returncode == 0 and "acme" in listed.stdout, listed.stderr
        key_id = listed.stdout.splitlines()[1].split()[0]
        with adamhub.Client(service.base_url, api_key=secret) as team:
            session = team.create_session(size=4)
            assert [s.id for s in team.list_sessions()] == [session.id]
        assert keys("revoke", key_id).returncode == 0
        time.sleep(1.0)  # a replica re-reads a cached key within a second
        with (
            adamhub.Client(service.base_url, api_key=secret) as revoked,
            pytest.raises(adamhub.AuthenticationError),
        ):
            revoked.list_sessions()
    finally:
        service.stop()
        cluster.cleanup()
