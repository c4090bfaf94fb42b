"""Rounds end to end: worker processes and real service processes, with crashes, lossy
links and two replicas."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import redis

import adamhub
from adamhub_service.optim import AdamConfig, adam_step, init_state
from adamhub_service.testing import DroppingProxy, ServiceProcess

T = TypeVar("T")
SIZE = 1000
CONFIG = AdamConfig(lr=0.01)


def gradient(worker: int, round_: int) -> np.ndarray:
    return np.random.default_rng([worker, round_]).normal(size=SIZE)


def worker_rounds(
    base_url: str, session_id: str, worker: int, rounds: int, max_retries: int = 3
) -> list[tuple[int, bytes]]:
    """``rounds`` contributions through the SDK; each answer's step and parameters."""
    answers = []
    with adamhub.Client(
        base_url, max_retries=max_retries, initial_retry_delay=0.05, max_retry_delay=1.0
    ) as client:
        session = client.session(session_id)
        for round_ in range(rounds):
            params = session.step(gradient(worker, round_))
            assert session.last_applied_t is not None
            answers.append((session.last_applied_t, params.tobytes()))
    return answers


def expected(workers: int, rounds: int) -> list[np.ndarray]:
    """A local Adam on the mean gradient of each round: its parameters after each."""
    state = init_state(np.zeros(SIZE), CONFIG)
    trajectory = []
    for round_ in range(rounds):
        mean = np.mean([gradient(w, round_) for w in range(workers)], axis=0)
        state = adam_step(state, mean, CONFIG)
        trajectory.append(state.params)
    return trajectory


def new_session(base_url: str, rounds: dict[str, int]) -> str:
    with adamhub.Client(base_url) as client:
        return client.create_session(
            size=SIZE, dtype="float64", optimizer={"lr": 0.01}, rounds=rounds
        ).id


def check(answers: list[list[tuple[int, bytes]]], workers: int, rounds: int) -> float:
    """Every worker got every round once, the same parameters, equal to the local Adam's
    to 1e-12; the largest deviation."""
    trajectory = expected(workers, rounds)
    worst = 0.0
    for round_ in range(rounds):
        got = {answers[w][round_] for w in range(workers)}
        assert len(got) == 1, f"workers disagree at round {round_}"
        (applied_t, params) = got.pop()
        assert applied_t == round_ + 1
        deviation = float(np.abs(np.frombuffer(params) - trajectory[round_]).max())
        worst = max(worst, deviation)
    assert worst <= 1e-12, worst
    return worst


def test_four_worker_processes_for_twenty_rounds_equal_adam_on_the_mean(
    service_url: str,
) -> None:
    session_id = new_session(service_url, {"contributions": 4})
    # spawn: the suite may have loaded JAX, whose threads a fork would copy mid-flight.
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        answers = pool.starmap(worker_rounds, [(service_url, session_id, w, 20) for w in range(4)])
    print(f"4 workers x 20 rounds vs local Adam on the means: {check(answers, 4, 20):.1e}")
    with adamhub.Client(service_url) as client:
        assert client.session(session_id).t == 20


def test_contributions_through_a_lossy_link_count_once(service_url: str) -> None:
    port = int(service_url.rsplit(":", 1)[1])
    proxy = DroppingProxy(port, drop_ratio=0.2, seed=5)
    try:
        session_id = new_session(service_url, {"contributions": 3})
        answers = run_threads(
            [
                partial(worker_rounds, proxy.base_url, session_id, w, 15, max_retries=20)
                for w in range(3)
            ]
        )
        check(answers, 3, 15)
        assert proxy.dropped >= 5, f"only {proxy.dropped} answers were dropped"
        print(f"lost answers: {proxy.dropped} of {proxy.dropped + proxy.forwarded}")
    finally:
        proxy.close()
    with adamhub.Client(service_url) as client:
        assert client.session(session_id).t == 15


def test_contributions_spread_over_two_service_processes(redis_url: str, tmp_path: Path) -> None:
    services = [
        ServiceProcess("--redis-url", redis_url, log_path=tmp_path / f"service{i}.log").start()
        for i in range(2)
    ]
    try:
        session_id = new_session(services[0].base_url, {"contributions": 4})
        answers = run_threads(
            [partial(worker_rounds, services[w % 2].base_url, session_id, w, 10) for w in range(4)]
        )
        check(answers, 4, 10)
    finally:
        for service in services:
            assert service.stop() == 0


def test_kill_9_with_two_of_four_in_then_two_more_close_the_round_with_all_four(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    def start(port: int | None = None) -> ServiceProcess:
        return start_service(redis_url, tmp_path, port)

    service = start()
    session_id = new_session(service.base_url, {"contributions": 4})
    round_key = f"adamhub:{{{session_id}}}:round"
    early: list[list[tuple[int, bytes]]] = []
    # Two workers contribute and wait on the round; their SDKs retry after the crash.
    threads = [
        threading.Thread(
            target=lambda w=w: early.append(
                worker_rounds(service.base_url, session_id, w, 1, max_retries=30)
            )
        )
        for w in range(2)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while int(redis_client.hget(round_key, "n") or 0) < 2:
        assert time.monotonic() < deadline, "the contributions did not arrive"
        time.sleep(0.02)
    service.kill()
    assert int(redis_client.hget(round_key, "n") or 0) == 2  # stored before acknowledged
    service = start(service.port)
    try:
        late = run_threads(
            [partial(worker_rounds, service.base_url, session_id, w, 1) for w in (2, 3)]
        )
        for thread in threads:
            thread.join(60)
        answers = sorted(early, key=lambda a: a[0][1]) + late  # any order of the first two
        assert len(answers) == 4
        check(answers, 4, 1)
        with adamhub.Client(service.base_url) as client:
            assert client.session(session_id).t == 1  # the retried two counted once
        assert not redis_client.exists(round_key)
    finally:
        assert service.stop() == 0


def start_service(redis_url: str, tmp_path: Path, port: int | None = None) -> ServiceProcess:
    """The service on ``redis_url`` (on ``port``: a restart), logging under ``tmp_path``."""
    return ServiceProcess(
        "--redis-url", redis_url, port=port, log_path=tmp_path / "service.log"
    ).start()


def run_threads(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run the calls on threads at once; their results in order."""
    results: list[Any] = [None] * len(calls)
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    return results


def test_kill_9_keeps_a_202_contribution_and_takes_a_waiting_one_again(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    def start(port: int | None = None) -> ServiceProcess:
        return start_service(redis_url, tmp_path, port)

    service = start()
    session_id = new_session(service.base_url, {"contributions": 3})
    round_key = f"adamhub:{{{session_id}}}:round"
    told_in = httpx.post(
        f"{service.base_url}/v1/sessions/{session_id}/step",
        content=gradient(0, 0).tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Adamhub-Dtype": "float64",
            "Idempotency-Key": "worker-0",
            "Prefer": "wait=0",
        },
    )
    assert told_in.status_code == 202
    waiting: list[list[tuple[int, bytes]]] = []
    thread = threading.Thread(
        target=lambda: waiting.append(
            worker_rounds(service.base_url, session_id, 1, 1, max_retries=30)
        )
    )
    thread.start()
    deadline = time.monotonic() + 20
    while int(redis_client.hget(round_key, "n") or 0) < 2:
        assert time.monotonic() < deadline, "the contribution did not arrive"
        time.sleep(0.02)
    service.kill()
    # The 202 one is stored; the waiting one was held by the process that died.
    assert not redis_client.hexists(round_key, "m1")
    assert redis_client.hexists(round_key, "m2")
    service = start(service.port)
    try:
        (late,) = run_threads([partial(worker_rounds, service.base_url, session_id, 2, 1)])
        thread.join(60)
        assert len(waiting) == 1
        mean = np.mean([gradient(w, 0) for w in range(3)], axis=0)
        params = adam_step(init_state(np.zeros(SIZE), CONFIG), mean, CONFIG).params
        for answers in (waiting[0], late):
            (applied_t, got) = answers[0]
            assert applied_t == 1
            np.testing.assert_allclose(np.frombuffer(got), params, rtol=0, atol=1e-12)
        with adamhub.Client(service.base_url) as client:
            assert client.session(session_id).t == 1  # three in, each once
        assert not redis_client.exists(round_key)
    finally:
        assert service.stop() == 0


def test_a_burst_past_the_store_connections_queues_for_them_instead_of_failing(
    redis_url: str, tmp_path: Path
) -> None:
    """Twenty-four workers contribute to one round at once through a service allowed
    two store connections (per node, on a cluster): every contribution waits for a
    connection, none is refused ("Too many connections" was a 503 for each request past
    the pool, and a 64-worker round on 16 cores never closed)."""
    log = tmp_path / "service.log"
    service = ServiceProcess(
        "--redis-url", redis_url, env={"ADAMHUB_REDIS_MAX_CONNECTIONS": "2"}, log_path=log
    ).start()
    try:
        workers = 24
        sid = new_session(service.base_url, {"contributions": workers})
        statuses: list[int] = []
        gate = threading.Barrier(workers)

        def contribute(index: int) -> None:
            gate.wait()
            response = httpx.post(
                f"{service.base_url}/v1/sessions/{sid}/step",
                json={"gradient": gradient(index, 0).tolist()},
                headers={"Idempotency-Key": f"burst-{index}"},
                timeout=60,
            )
            statuses.append(response.status_code)

        threads = [threading.Thread(target=contribute, args=(i,)) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * workers
        assert httpx.get(f"{service.base_url}/v1/sessions/{sid}").json()["t"] == 1
        assert "Too many connections" not in log.read_text()
    finally:
        service.stop()
