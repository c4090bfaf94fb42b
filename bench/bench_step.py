"""Step latency of the real service, one client, binary bodies, for several sizes.

    make bench            (or: .venv/bin/python bench/bench_step.py [--steps N])

Starts a private Redis (AOF everysec, as deployed) and `adamhub-service serve` on free
ports, then for each size times steps sent by one keep-alive client, with the
parameters returned and with `?return=none`. For scale it also times, in the same run,
the optimiser alone (numpy) and a bare Redis round trip of the same bytes (SET of θ, m,
v + GET), so the figures can be read as ratios on a noisy machine. Prints a table and
writes bench/results/step_latency.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from adamhub_service.optim import AdamConfig, adam_step, init_state
from adamhub_service.testing import ServiceProcess, StoreServer

BINARY = "application/octet-stream"
SIZES = (1_000, 100_000, 1_000_000)


def timed(action: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """Median and 90th percentile, in ms."""
    ordered = sorted(times)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
    }


def bench_size(client: httpx.Client, store: redis.Redis, size: int, steps: int) -> dict[str, Any]:
    """Every measurement for one size."""
    session = client.post("/v1/sessions", json={"size": size}).json()["id"]
    gradient = np.random.default_rng(0).normal(size=size).astype(np.float32).tobytes()

    def step(query: str = "") -> None:
        response = client.post(
            f"/v1/sessions/{session}/step{query}",
            content=gradient,
            headers={"Content-Type": BINARY, "Accept": BINARY},
        )
        response.raise_for_status()

    def step_keyed() -> None:
        response = client.post(
            f"/v1/sessions/{session}/step?return=none",
            content=gradient,
            headers={"Content-Type": BINARY, "Idempotency-Key": f"k{time.perf_counter_ns()}"},
        )
        response.raise_for_status()

    timed(step, 5)  # warm up: connections, caches
    with_params = timed(step, steps)
    without_params = timed(lambda: step("?return=none"), steps)
    keyed = timed(step_keyed, steps)

    config = AdamConfig()
    state = init_state(np.zeros(size, np.float32), config)
    grad = np.frombuffer(gradient, np.float32)
    numpy_only = timed(lambda: adam_step(state, grad, config), steps)

    blob = np.zeros(size, np.float32).tobytes()

    def redis_round_trip() -> None:
        with store.pipeline(transaction=False) as pipe:
            for name in ("bench:p", "bench:m", "bench:v"):
                pipe.set(name, blob)
            pipe.get("bench:p")
            pipe.execute()

    bare_redis = timed(redis_round_trip, steps)
    client.delete(f"/v1/sessions/{session}")
    row: dict[str, Any] = {
        "size": size,
        "step": summary(with_params),
        "step_return_none": summary(without_params),
        "step_idempotency_key": summary(keyed),
        "numpy_adam_step": summary(numpy_only),
        "redis_set3_get1": summary(bare_redis),
    }
    row["steps_per_s"] = round(1000 / statistics.median(with_params), 1)
    row["step_over_numpy_plus_redis"] = round(
        statistics.median(with_params)
        / (statistics.median(numpy_only) + statistics.median(bare_redis)),
        2,
    )
    return row


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per measurement")
    args = parser.parse_args()

    store = StoreServer("--appendonly", "yes", "--appendfsync", "everysec").start()
    log = Path(tempfile.mkstemp(prefix="adamhub-bench-", suffix=".log")[1])
    service = ServiceProcess("--redis-url", store.url, log_path=log).start()
    rows: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=service.base_url, timeout=120) as client:
            direct = redis.Redis.from_url(store.url)
            for size in SIZES:
                steps = args.steps if size < 1_000_000 else max(10, args.steps // 3)
                rows.append(bench_size(client, direct, size, steps))
            direct.close()
    finally:
        service.stop()
        store.cleanup()

    header = (
        f"{'size':>9} {'step p50':>9} {'p90':>8} {'none p50':>9} {'key p50':>8} "
        f"{'numpy':>7} {'redis':>7} {'steps/s':>8} {'ratio':>6}"
    )
    print("step latency, ms (one client, binary, float32; ratio = step / (numpy + redis))")
    print(header)
    for row in rows:
        step, none, key = row["step"], row["step_return_none"], row["step_idempotency_key"]
        numpy_ms, redis_ms = row["numpy_adam_step"], row["redis_set3_get1"]
        print(
            f"{row['size']:>9} {step['p50_ms']:>9.2f} {step['p90_ms']:>8.2f} "
            f"{none['p50_ms']:>9.2f} {key['p50_ms']:>8.2f} {numpy_ms['p50_ms']:>7.2f} "
            f"{redis_ms['p50_ms']:>7.2f} {row['steps_per_s']:>8} "
            f"{row['step_over_numpy_plus_redis']:>6}"
        )
    out = Path(__file__).resolve().parent / "results" / "step_latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
