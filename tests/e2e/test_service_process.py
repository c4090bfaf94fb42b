"""The real service process: concurrency, crashes, restarts and a failing store."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from adamhub_service.optim import AdamConfig, adam_step, init_state
from adamhub_service.testing import ServiceProcess, StoreServer, free_port

BINARY = "application/octet-stream"
SIZE = 1000


@pytest.fixture
def service(redis_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess("--redis-url", redis_url, log_path=tmp_path / "service.log").start()
    yield process
    assert process.stop() == 0


def gradient(worker: int, index: int) -> np.ndarray:
    """A deterministic gradient for request ``index`` of ``worker``."""
    return np.random.default_rng([worker, index]).normal(size=SIZE).astype(np.float32)


def create_session(base_url: str) -> str:
    response = httpx.post(
        f"{base_url}/v1/sessions", json={"size": SIZE, "optimizer": {"lr": 0.01}}, timeout=30
    )
    assert response.status_code == 201
    session_id: str = response.json()["id"]
    return session_id


def post_step(client: httpx.Client, session_id: str, grad: np.ndarray, key: str) -> httpx.Response:
    return client.post(
        f"/v1/sessions/{session_id}/step",
        content=grad.tobytes(),
        headers={"Content-Type": BINARY, "Accept": BINARY, "Idempotency-Key": key},
    )


def step_until_acknowledged(
    client: httpx.Client, session_id: str, grad: np.ndarray, key: str
) -> httpx.Response:
    """Send a step, retrying (same key) on 409/503 as a well-behaved client does."""
    for _ in range(50):
        response = post_step(client, session_id, grad, key)
        if response.status_code not in (409, 503):
            return response
    raise AssertionError(f"step {key} was never acknowledged: {response.text}")


def run_workers(
    base_urls: list[str], session_id: str, workers: int, steps: int
) -> dict[int, tuple[int, int]]:
    """``workers`` threads × ``steps`` steps, spread over the services; applied_t -> request."""
    applied: dict[int, tuple[int, int]] = {}
    lock = threading.Lock()

    def work(worker: int) -> None:
        with httpx.Client(base_url=base_urls[worker % len(base_urls)], timeout=60) as client:
            for index in range(steps):
                response = step_until_acknowledged(
                    client, session_id, gradient(worker, index), f"w{worker}-{index}"
                )
                assert response.status_code == 200, response.text
                applied_t = int(response.headers["adamhub-applied-step"])
                with lock:
                    assert applied_t not in applied, f"applied_t {applied_t} answered twice"
                    applied[applied_t] = (worker, index)

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(work, w) for w in range(workers)]:
            future.result()
    return applied


def replay(order: list[tuple[int, int]], config: AdamConfig) -> np.ndarray:
    """The parameters of an uncrashed, single-threaded run in this order."""
    state = init_state(np.zeros(SIZE, np.float32), config)
    for worker, index in order:
        state = adam_step(state, gradient(worker, index), config)
    return state.params


def current_params(base_url: str, session_id: str) -> tuple[int, np.ndarray]:
    response = httpx.get(
        f"{base_url}/v1/sessions/{session_id}/params", headers={"Accept": BINARY}, timeout=30
    )
    assert response.status_code == 200
    return int(response.headers["adamhub-step"]), np.frombuffer(response.content, np.float32)


def check_serialised(
    base_url: str, session_id: str, applied: dict[int, tuple[int, int]], total: int
) -> None:
    assert sorted(applied) == list(range(1, total + 1))
    t, params = current_params(base_url, session_id)
    assert t == total
    expected = replay([applied[t] for t in sorted(applied)], AdamConfig(lr=0.01))
    assert np.array_equal(params, expected), "the steps were not applied one at a time, in order"


def test_eight_clients_on_one_session(service: ServiceProcess) -> None:
    session_id = create_session(service.base_url)
    applied = run_workers([service.base_url], session_id, workers=8, steps=50)
    check_serialised(service.base_url, session_id, applied, 400)


def test_two_service_processes_on_one_redis(
    service: ServiceProcess, redis_url: str, tmp_path: Path
) -> None:
    second = ServiceProcess("--redis-url", redis_url, log_path=tmp_path / "second.log").start()
    try:
        session_id = create_session(service.base_url)
        applied = run_workers([service.base_url, second.base_url], session_id, workers=8, steps=50)
        check_serialised(second.base_url, session_id, applied, 400)
    finally:
        second.stop()


def test_retried_key_is_applied_once_over_http(service: ServiceProcess) -> None:
    session_id = create_session(service.base_url)
    with service.client() as client:
        first = post_step(client, session_id, gradient(0, 0), "same")
        again = post_step(client, session_id, gradient(0, 0), "same")
        other = post_step(client, session_id, gradient(0, 1), "same")
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert first.content == again.content
    assert other.status_code == 422
    assert current_params(service.base_url, session_id)[0] == 1


def test_kill_9_while_stepping_loses_no_acknowledged_step(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()

    def start() -> ServiceProcess:
        return ServiceProcess(
            "--data-dir", str(data_dir), port=port, log_path=tmp_path / "service.log"
        ).start()

    service = start()
    session_id = create_session(service.base_url)
    acknowledged: dict[tuple[int, int], int] = {}
    in_doubt: list[tuple[int, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work(worker: int) -> None:
        with httpx.Client(base_url=service.base_url, timeout=30) as client:
            index = 0
            while not stop.is_set():
                try:
                    response = post_step(
                        client, session_id, gradient(worker, index), f"w{worker}-{index}"
                    )
                except httpx.HTTPError:
                    with lock:
                        in_doubt.append((worker, index))
                    return
                assert response.status_code == 200, response.text
                with lock:
                    acknowledged[(worker, index)] = int(response.headers["adamhub-applied-step"])
                index += 1

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    while len(acknowledged) < 120:
        threading.Event().wait(0.01)
    service.kill()
    stop.set()
    for thread in threads:
        thread.join()
    before_crash = dict(acknowledged)

    service = start()
    try:
        t_after_restart, _ = current_params(service.base_url, session_id)
        assert t_after_restart >= max(before_crash.values())  # no acknowledged step lost
        # Requests cut off by the crash: retrying with their keys tells whether they
        # were applied (a replay) or applies them now, exactly once either way.
        with service.client() as client:
            for worker, index in in_doubt:
                response = post_step(
                    client, session_id, gradient(worker, index), f"w{worker}-{index}"
                )
                assert response.status_code == 200
                acknowledged[(worker, index)] = int(response.headers["adamhub-applied-step"])
        order = {t: request for request, t in acknowledged.items()}
        total = len(acknowledged)
        assert sorted(order) == list(range(1, total + 1)), "a step was lost or applied twice"
        t, params = current_params(service.base_url, session_id)
        assert t == total
        expected = replay([order[t] for t in range(1, total + 1)], AdamConfig(lr=0.01))
        assert np.array_equal(params, expected)
        # m, v and t came from the same step as θ: the next step agrees with the replay too.
        with service.client() as client:
            response = post_step(client, session_id, gradient(99, 0), "after")
        expected = replay([*(order[t] for t in range(1, total + 1)), (99, 0)], AdamConfig(lr=0.01))
        assert np.array_equal(np.frombuffer(response.content, np.float32), expected)
    finally:
        assert service.stop() == 0


def test_restart_on_the_same_data_folder_keeps_every_session(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    service = ServiceProcess("--data-dir", data_dir, log_path=tmp_path / "1.log").start()
    ids = [create_session(service.base_url) for _ in range(3)]
    with service.client() as client:
        for i in range(5):
            post_step(client, ids[0], gradient(0, i), f"k{i}")
        before = [current_params(service.base_url, sid) for sid in ids]
    assert service.stop() == 0
    service = ServiceProcess("--data-dir", data_dir, log_path=tmp_path / "2.log").start()
    try:
        after = [current_params(service.base_url, sid) for sid in ids]
        assert [t for t, _ in after] == [5, 0, 0]
        assert all(np.array_equal(a[1], b[1]) for a, b in zip(before, after, strict=True))
    finally:
        assert service.stop() == 0


def test_a_second_service_on_the_same_data_folder_is_refused(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    service = ServiceProcess("--data-dir", data_dir, log_path=tmp_path / "1.log").start()
    try:
        second = ServiceProcess("--data-dir", data_dir, log_path=tmp_path / "2.log")
        with pytest.raises(RuntimeError, match="another adamhub service is using"):
            second.start()
    finally:
        assert service.stop() == 0


def test_store_outage_is_503_then_recovers(tmp_path: Path) -> None:
    store = StoreServer("--appendonly", "yes").start()
    service = ServiceProcess("--redis-url", store.url, log_path=tmp_path / "service.log",
                             env={"ADAMHUB_REDIS_TIMEOUT_SECONDS": "2"}).start()  # fmt: skip
    try:
        session_id = create_session(service.base_url)
        store.stop()
        # A hang would trip this client's timeout; the service must answer 503 first.
        with service.client(timeout=20) as client:
            for call in _calls(session_id):
                response = call(client)
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"]
                assert "Traceback" not in response.text
                assert response.json()["type"].endswith("/store-unavailable")
        store.start()
        with service.client(timeout=20) as client:
            assert client.get("/readyz").status_code == 200
            response = post_step(client, session_id, gradient(0, 0), "after-outage")
            assert response.status_code == 200
            assert response.headers["adamhub-applied-step"] == "1"
    finally:
        service.stop()
        store.cleanup()


def _calls(session_id: str) -> list[Callable[[httpx.Client], httpx.Response]]:
    return [
        lambda c: c.get("/readyz"),
        lambda c: c.get(f"/v1/sessions/{session_id}"),
        lambda c: post_step(c, session_id, gradient(0, 0), "during-outage"),
        lambda c: c.post("/v1/sessions", json={"size": 3}),
    ]
