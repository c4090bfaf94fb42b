"""Measurements of the service's limits (not run by the tests; figures for the notes).

    .venv/bin/python bench/bench_limits.py [body] [stall] [rate] [max-size] [max-size-3]

- body: service RSS while 900 MB bodies are sent to a 3-element session (Content-Length
  and chunked, one and four at once);
- stall: how long 10 steps queued on one session wait for an answer while the store
  sleeps (DEBUG SLEEP), with a 1 s store timeout;
- rate: p50 of a 1k binary step with a key, rate limiter off and on;
- max-size: create and step a session of ADAMHUB_MAX_SIZE (2^27) parameters, and the
  peak RSS of the service and of Redis; max-size-3: three at once.
"""

from __future__ import annotations

import select
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import redis

import adamhub
from adamhub_service.testing import ServiceProcess, StoreServer

MASTER = "bench-master-key-0123456789abcdef"


def rss(pid: int) -> int:
    """Resident memory of a process, bytes (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def post_head(path: str, length: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/octet-stream\r\n{length}\r\n\r\n"
    ).encode()


def push(port: int, head: bytes, piece: bytes, limit: int) -> tuple[bytes, int]:
    """Send a head, then pieces until the service answers; the answer's status line and
    the bytes the client pushed."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        while sent < limit and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(piece)
            except OSError:
                break
            sent += len(piece)
        try:
            return sock.recv(200)[:12], sent
        except OSError:
            return b"", sent


def body(store: StoreServer) -> None:
    service = ServiceProcess("--redis-url", store.url, env={"ADAMHUB_LOG_LEVEL": "warning"}).start()
    try:
        assert service.process is not None
        session = httpx.post(f"{service.base_url}/v1/sessions", json={"size": 3}).json()["id"]
        path = f"/v1/sessions/{session}/step"
        before = rss(service.process.pid)
        kinds = {
            "Content-Length": (post_head(path, "Content-Length: 900000000"), b"\0" * (1 << 20)),
            "chunked": (
                post_head(path, "Transfer-Encoding: chunked"),
                b"100000\r\n" + b"\0" * 0x100000 + b"\r\n",
            ),
        }
        for label, (head, piece) in kinds.items():
            for count in (1, 4):
                answers: list[tuple[bytes, int]] = []

                def send(
                    head: bytes = head, piece: bytes = piece, out: list[tuple[bytes, int]] = answers
                ) -> None:
                    out.append(push(service.port, head, piece, 900 << 20))

                threads = [threading.Thread(target=send) for _ in range(count)]
                began = time.monotonic()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                print(
                    f"900 MB body, {label}, {count} at once: {[a[0].decode() for a in answers]} "
                    f"in {time.monotonic() - began:.2f} s; service RSS {before >> 20} → "
                    f"{rss(service.process.pid) >> 20} MiB"
                )
    finally:
        service.stop()


def stall(store: StoreServer) -> None:
    service = ServiceProcess(
        "--redis-url",
        store.url,
        env={"ADAMHUB_LOG_LEVEL": "warning", "ADAMHUB_REDIS_TIMEOUT_SECONDS": "1"},
    ).start()
    client = redis.Redis.from_url(store.url, socket_timeout=30)
    try:
        session = httpx.post(f"{service.base_url}/v1/sessions", json={"size": 3}).json()["id"]
        sleeper = threading.Thread(target=client.execute_command, args=("DEBUG", "SLEEP", "6"))
        sleeper.start()
        time.sleep(0.2)
        answered: list[tuple[int, float]] = []

        def step(index: int) -> None:
            began = time.monotonic()
            response = httpx.post(
                f"{service.base_url}/v1/sessions/{session}/step",
                json={"gradient": [1, 2, 3]},
                headers={"Idempotency-Key": f"stall-{index}"},
                timeout=60,
            )
            answered.append((response.status_code, time.monotonic() - began))

        threads = [threading.Thread(target=step, args=(i,)) for i in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sleeper.join()
        statuses = sorted(status for status, _ in answered)
        slowest = max(seconds for _, seconds in answered)
        print(
            f"10 steps queued on a sleeping store (1 s timeout): {statuses}, slowest {slowest:.2f}s"
        )
    finally:
        client.close()
        service.stop()


def rate(store: StoreServer, steps: int = 800) -> None:
    def p50(env: dict[str, str]) -> float:
        service = ServiceProcess(
            "--redis-url",
            store.url,
            env={"ADAMHUB_LOG_LEVEL": "warning", "ADAMHUB_MASTER_KEY": MASTER, **env},
        ).start()
        try:
            with httpx.Client(base_url=service.base_url) as http:
                http.headers["Authorization"] = f"Bearer {MASTER}"
                key = http.post("/v1/keys", json={"tenant": "bench"}).json()["key"]
                http.headers["Authorization"] = f"Bearer {key}"
                session = http.post("/v1/sessions", json={"size": 1000}).json()["id"]
                gradient = np.ones(1000, np.float32).tobytes()
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Accept": "application/octet-stream",
                }
                latencies = []
                for _ in range(steps):
                    began = time.perf_counter()
                    http.post(f"/v1/sessions/{session}/step", content=gradient, headers=headers)
                    latencies.append(time.perf_counter() - began)
            return statistics.median(latencies[100:]) * 1000
        finally:
            service.stop()

    for round_ in range(2):
        off = p50({"ADAMHUB_RATE_LIMIT": "0"})
        on = p50({"ADAMHUB_RATE_LIMIT": "100000", "ADAMHUB_RATE_LIMIT_BURST": "100000"})
        print(f"1k step p50 with a key, round {round_}: limiter off {off:.2f} ms, on {on:.2f} ms")


def max_size(store: StoreServer, count: int) -> None:
    size = 1 << 27
    service = ServiceProcess("--redis-url", store.url, env={"ADAMHUB_LOG_LEVEL": "warning"}).start()
    assert service.process is not None and store.process is not None
    peak = {"service": 0, "redis": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            assert service.process is not None and store.process is not None
            peak["service"] = max(peak["service"], rss(service.process.pid))
            peak["redis"] = max(peak["redis"], rss(store.process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    results: list[str] = []

    def one(index: int) -> None:
        with adamhub.Client(service.base_url, timeout=600) as client:
            began = time.monotonic()
            session = client.create_session(size=size)
            created = time.monotonic() - began
            gradient = np.full(size, 0.01, np.float32)
            began = time.monotonic()
            session.step(gradient)
            results.append(
                f"session {index}: create {created:.1f} s, step {time.monotonic() - began:.1f} s, "
                f"t = {session.t}"
            )

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        done.set()
        sampler.join()
        service.stop()
    for line in sorted(results):
        print(f"{size}-parameter sessions, {count} at once: {line}")
    service_gib, redis_gib = peak["service"] / 2**30, peak["redis"] / 2**30
    print(f"peak RSS: service {service_gib:.2f} GiB, Redis {redis_gib:.2f} GiB")


def main(which: list[str]) -> None:
    measurements: dict[str, Callable[[StoreServer], None]] = {
        "body": body,
        "stall": stall,
        "rate": rate,
        "max-size": lambda store: max_size(store, 1),
        "max-size-3": lambda store: max_size(store, 3),
    }
    for name in which or list(measurements):
        store = StoreServer("--enable-debug-command", "yes").start()
        try:
            measurements[name](store)
        finally:
            store.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
