"""adamhub side by side with the peers, in one run on this machine: one table.

    make bench     (or: .venv/bin/python bench/bench_step.py [--quick] [--no-100m])

Starts a private Redis (AOF everysec, as deployed) and `adamhub-service serve`, then
measures, binary float32, medians:

- step latency at 1k / 100k / 1M / 10M parameters, one client: torch's fused Adam in
  process (when torch is installed), the numpy floor (Adam as whole-array numpy
  operations, in process), a bare Redis round trip of the same bytes (SET the gradient,
  GET the parameters), a Ray actor parameter server (θ, m, v in the actor's memory, no
  durability; needs the `bench` extra) and adamhub through the SDK;
- throughput with worker *processes*: 8 on one 1k session, 8 on eight 1k sessions, 4 on
  one 100k session;
- Redis bytes written per adamhub step ÷ the gradient's bytes (INFO total_net_input_bytes,
  snapshots included);
- one 100M-parameter step through the SDK.

Each row gives adamhub's ratio to Ray (time: adamhub ÷ Ray, lower is better; throughput:
adamhub ÷ Ray, higher is better). Writes bench/results/compare.json and compare.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

import adamhub
from adamhub_service.testing import ServiceProcess, StoreServer

SIZES = (1_000, 100_000, 1_000_000, 10_000_000)
STEPS = {1_000: 300, 100_000: 100, 1_000_000: 30, 10_000_000: 8}
THROUGHPUT_SECONDS = 4.0
HUGE = 100_000_000
RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, table: str, document: Any) -> None:
    """Print ``table`` and write it to bench/results/<name>.md, ``document`` to <name>.json."""
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(table)
    (RESULTS / f"{name}.json").write_text(json.dumps(document, indent=2))
    print(f"wrote {RESULTS / name}.md and {name}.json")


def quiet_machine(busy_below: float = 0.15, seconds: float = 15.0) -> None:
    """Wait until the machine's cores are idle (under ``busy_below`` of one core busy
    over half a second), at most ``seconds``: what one peer left running (Ray starting
    workers again after its actors are killed, a service's snapshot) is not counted
    against the next one measured. Linux; elsewhere a second's pause."""
    stat = Path("/proc/stat")
    if not stat.exists():
        time.sleep(1.0)
        return

    def busy_and_total() -> tuple[int, int]:
        fields = [int(value) for value in stat.read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle and iowait
        return sum(fields) - idle, sum(fields)

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        busy, total = busy_and_total()
        time.sleep(0.5)
        busy_after, total_after = busy_and_total()
        cores = os.cpu_count() or 1
        if total_after > total and (busy_after - busy) / (total_after - total) * cores < busy_below:
            return


def median_ms(action: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """The median of ``repeats`` timed calls, in ms, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        action()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def gradient_of(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=size).astype(np.float32) * 1e-3


# -- the peers in process ------------------------------------------------------------


def numpy_adam(p: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, t: int) -> None:
    """Adam in place as whole-array numpy operations (what a Python parameter server
    such as Ray's example does)."""
    lr, beta1, beta2, eps = 1e-3, 0.9, 0.999, 1e-8
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    denom = np.sqrt(v / (1 - beta2**t))
    denom += eps
    p -= (lr / (1 - beta1**t)) * m / denom


def numpy_floor_ms(size: int) -> float:
    p, m, v = (np.zeros(size, np.float32) for _ in range(3))
    g = gradient_of(size)
    counter = iter(range(1, 1 << 30))
    return median_ms(lambda: numpy_adam(p, m, v, g, next(counter)), STEPS[size])


def torch_fused_ms(size: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    param = torch.nn.Parameter(torch.zeros(size))
    grad = torch.from_numpy(gradient_of(size))
    try:
        optimizer = torch.optim.Adam([param], lr=1e-3, fused=True)
    except (RuntimeError, ValueError):  # builds without a fused CPU kernel
        optimizer = torch.optim.Adam([param], lr=1e-3, foreach=True)

    def step() -> None:
        param.grad = grad
        optimizer.step()

    return median_ms(step, STEPS[size])


def redis_round_trip_ms(client: redis.Redis, size: int) -> float:
    """SET the gradient's bytes and GET as many back, in 1 MiB chunks, one pipeline."""
    blob = gradient_of(size).tobytes()
    pieces = [blob[i : i + (1 << 20)] for i in range(0, len(blob), 1 << 20)]
    for i, piece in enumerate(pieces):
        client.set(f"bench:p:{i}", piece)

    def trip() -> None:
        with client.pipeline(transaction=False) as pipe:
            for i, piece in enumerate(pieces):
                pipe.set(f"bench:g:{i}", piece)
            for i in range(len(pieces)):
                pipe.get(f"bench:p:{i}")
            pipe.execute()

    result = median_ms(trip, STEPS[size])
    client.delete(*(f"bench:{k}:{i}" for k in "gp" for i in range(len(pieces))))
    return result


# -- Ray -----------------------------------------------------------------------------


def ray_module() -> Any:
    """Ray, or None when the `bench` extra is not installed (typed loosely: the tests'
    type check runs without it)."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        return None


class RayPeer:
    """A Ray actor holding θ, m, v in memory; ``step`` applies a gradient and returns θ."""

    def __init__(self, ray: Any) -> None:
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, logging_level=40)
        self.ray = ray

        @ray.remote
        class ParameterServer:
            def __init__(self, size: int) -> None:
                self.p, self.m, self.v = (np.zeros(size, np.float32) for _ in range(3))
                self.t = 0

            def step(self, gradient: np.ndarray) -> np.ndarray:
                self.t += 1
                numpy_adam(self.p, self.m, self.v, gradient, self.t)
                return self.p

        self.server_class = ParameterServer

    def server(self, size: int) -> Any:
        return self.server_class.remote(size)  # type: ignore[attr-defined]

    def step_ms(self, size: int, repeats: int | None = None) -> float:
        server = self.server(size)
        gradient = gradient_of(size)
        repeats = repeats or STEPS[size]
        step = lambda: self.ray.get(server.step.remote(gradient))  # noqa: E731
        result = median_ms(step, repeats, warmup=min(3, repeats))
        self.ray.kill(server)
        return result

    def throughput(self, workers: int, sessions: int, size: int) -> float:
        ray = self.ray
        servers = [self.server(size) for _ in range(sessions)]

        worker = ray.remote(num_cpus=1)(_ray_worker)
        counts = ray.get(
            [worker.remote(servers[n % sessions], size, THROUGHPUT_SECONDS) for n in range(workers)]
        )
        for server in servers:
            ray.kill(server)
        return float(sum(counts)) / THROUGHPUT_SECONDS

    def close(self) -> None:
        self.ray.shutdown()


def _ray_worker(server: Any, size: int, seconds: float) -> int:
    ray = ray_module()
    gradient = gradient_of(size)
    ray.get(server.step.remote(gradient))
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        ray.get(server.step.remote(gradient))
        done += 1
    return done


# -- adamhub -------------------------------------------------------------------------


def adamhub_step_ms(client: adamhub.Client, size: int, repeats: int) -> float:
    session = client.create_session(size=size)
    gradient = gradient_of(size)
    result = median_ms(lambda: session.step(gradient), repeats, warmup=2)
    session.delete()
    return result


def interleaved_p50(
    sessions: dict[str, adamhub.Session], gradient: np.ndarray, repeats: int
) -> dict[str, float]:
    """p50 of a step of each session, interleaved step by step (neither always first) so
    that every one sees the same box."""
    times: dict[str, list[float]] = {label: [] for label in sessions}
    pair = list(sessions.items())
    for index in range(repeats + 20):
        for label, session in pair if index % 2 else pair[::-1]:
            start = time.perf_counter()
            session.step(gradient, loss=0.5)
            if index >= 20:
                times[label].append((time.perf_counter() - start) * 1000)
    return {label: statistics.median(values) for label, values in times.items()}


def history_overhead(client: adamhub.Client, repeats: int = 600) -> dict[str, Any]:
    """p50 of a 1k step with its history point recorded (the default) and without
    (``history_points=0``)."""
    with_history = client.create_session(size=1_000)
    without = client.create_session(size=1_000, history_points=0)
    p50 = interleaved_p50({"with": with_history, "without": without}, gradient_of(1_000), repeats)
    assert with_history.history(limit=1)[0]["t"] == repeats + 20
    assert without.history() == []
    with_history.delete()
    without.delete()
    on, off = p50["with"], p50["without"]
    return {"with_ms": round(on, 3), "without_ms": round(off, 3),
            "overhead_pct": round(100 * (on - off) / off, 1)}  # fmt: skip


def screening_overhead(client: adamhub.Client, size: int, repeats: int) -> dict[str, Any]:
    """p50 of a step of a session that screens its gradients (``screen``: the norm, the
    worker's record and the window of accepted norms) and of one that does not."""
    screened = client.create_session(size=size, screen={"window": 20})
    plain = client.create_session(size=size)
    p50 = interleaved_p50({"with": screened, "without": plain}, gradient_of(size), repeats)
    assert screened.screening()["refusals"] == []
    screened.delete()
    plain.delete()
    on, off = p50["with"], p50["without"]
    return {"params": size, "with_ms": round(on, 3), "without_ms": round(off, 3),
            "overhead_pct": round(100 * (on - off) / off, 1)}  # fmt: skip


def _adamhub_worker(base_url: str, session_id: str, size: int, seconds: float, queue: Any) -> None:
    with adamhub.Client(base_url=base_url) as client:
        session = client.session(session_id)
        gradient = gradient_of(size)
        session.step(gradient)
        done, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            session.step(gradient)
            done += 1
    queue.put(done)


def adamhub_throughput(
    client: adamhub.Client, base_url: str, workers: int, sessions: int, size: int
) -> float:
    ids = [client.create_session(size=size).id for _ in range(sessions)]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(
            target=_adamhub_worker,
            args=(base_url, ids[n % sessions], size, THROUGHPUT_SECONDS, queue),
        )
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    counts = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join()
    steps = int(sum(counts))
    applied = sum(client.session(session_id).t for session_id in ids)
    assert applied == steps + workers, "every step applied once (and one warm-up each)"
    for session_id in ids:
        client.session(session_id).delete()
    return float(steps) / THROUGHPUT_SECONDS


def bytes_per_step(client: adamhub.Client, store: redis.Redis, size: int, steps: int) -> float:
    """Bytes Redis received per step ÷ the gradient's bytes, snapshots included."""
    session = client.create_session(size=size)
    gradient = gradient_of(size)
    session.step(gradient)
    time.sleep(0.5)
    before = int(store.info("stats")["total_net_input_bytes"])
    for _ in range(steps):
        session.step(gradient)
    time.sleep(1.0)  # the last snapshot may still be being written
    received = int(store.info("stats")["total_net_input_bytes"]) - before
    session.delete()
    return received / (steps * gradient.nbytes)


# -- the table -----------------------------------------------------------------------


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or theirs is None else round(ours / theirs, 2)


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main() -> None:
    """Run every measurement, print the table, write it to bench/results."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 100k only, no 100M")
    parser.add_argument("--no-100m", action="store_true", help="skip the 100M-parameter step")
    args = parser.parse_args()
    sizes = SIZES[:2] if args.quick else SIZES

    store = StoreServer("--appendonly", "yes", "--appendfsync", "everysec").start()
    log = Path(tempfile.mkstemp(prefix="adamhub-bench-", suffix=".log")[1])
    service = ServiceProcess(
        "--redis-url",
        store.url,
        log_path=log,
        env={"ADAMHUB_CACHE_BYTES": str(4 << 30), "ADAMHUB_MAX_SIZE": str(HUGE)},
    ).start()
    ray = ray_module()
    peer = RayPeer(ray) if ray is not None else None
    note = "" if peer else "Ray is not installed (pip install -e '.[bench]'): its column is empty."
    latency: list[dict[str, Any]] = []
    throughput: list[dict[str, Any]] = []
    written: list[dict[str, Any]] = []
    huge: dict[str, Any] = {}
    overhead: dict[str, Any] = {}
    screening: list[dict[str, Any]] = []
    try:
        direct = redis.Redis.from_url(store.url)
        with adamhub.Client(base_url=service.base_url, timeout=600) as client:
            for size in sizes:
                row = {
                    "params": size,
                    "torch_fused_ms": torch_fused_ms(size),
                    "numpy_floor_ms": numpy_floor_ms(size),
                    "redis_round_trip_ms": redis_round_trip_ms(direct, size),
                    "ray_ms": peer.step_ms(size) if peer else None,
                    "adamhub_ms": adamhub_step_ms(client, size, STEPS[size]),
                }
                row["ratio"] = ratio(row["adamhub_ms"], row["ray_ms"])
                latency.append(row)
                print(row, flush=True)
            for label, workers, sessions, size in (
                ("8 workers, one 1k session", 8, 1, 1_000),
                ("8 workers, eight 1k sessions", 8, 8, 1_000),
                ("4 workers, one 100k session", 4, 1, 100_000),
            ):
                rate: dict[str, Any] = {
                    "row": label,
                    "ray_steps_per_s": peer.throughput(workers, sessions, size) if peer else None,
                    "adamhub_steps_per_s": adamhub_throughput(
                        client, service.base_url, workers, sessions, size
                    ),
                }
                rate["ratio"] = ratio(rate["adamhub_steps_per_s"], rate["ray_steps_per_s"])
                throughput.append(rate)
                print(rate, flush=True)
            overhead = history_overhead(client)
            print({"history": overhead}, flush=True)
            for size, repeats in ((1_000, 600), (1_000_000, 60)):
                screening.append(screening_overhead(client, size, repeats))
                print({"screening": screening[-1]}, flush=True)
            for size in sizes:
                steps = 200 if size <= 100_000 else 24
                written.append(
                    {"params": size, "ratio": round(bytes_per_step(client, direct, size, steps), 3)}
                )
                print(written[-1], flush=True)
            if not (args.quick or args.no_100m):
                session = client.create_session(size=HUGE)
                gradient = gradient_of(HUGE)
                session.step(gradient)  # the first step of a process also maps the pages
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    session.step(gradient)
                    times.append(time.perf_counter() - start)
                session.delete()
                huge = {"params": HUGE, "adamhub_s": round(statistics.median(times), 2)}
                print(huge, flush=True)
        direct.close()
    finally:
        if peer:
            peer.close()
        service.stop()
        store.cleanup()

    table = render(latency, throughput, written, huge, note, overhead, screening)
    document = {
        "machine": {"cpus": os.cpu_count()},
        "latency": latency,
        "throughput": throughput,
        "redis_bytes_per_gradient_byte": written,
        "step_100m": huge,
        "history_overhead_1k": overhead,
        "screening_overhead": screening,
        "note": note,
    }
    write_results("compare", table, document)


def render(
    latency: list[dict[str, Any]],
    throughput: list[dict[str, Any]],
    written: list[dict[str, Any]],
    huge: dict[str, Any],
    note: str,
    overhead: dict[str, Any],
    screening: list[dict[str, Any]],
) -> str:
    lines = [
        f"adamhub vs peers, one run, {os.cpu_count()} CPUs, binary float32, medians",
        "",
        "| step latency (ms) | torch fused | numpy floor | Redis trip | Ray actor | adamhub "
        "| adamhub ÷ Ray |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in latency:
        lines.append(
            f"| {row['params']:,} | {fmt(row['torch_fused_ms'])} | {fmt(row['numpy_floor_ms'])} "
            f"| {fmt(row['redis_round_trip_ms'])} | {fmt(row['ray_ms'])} "
            f"| {fmt(row['adamhub_ms'])} | {fmt(row['ratio'])} |"
        )
    lines += [
        "",
        "| throughput (steps/s) | Ray | adamhub | adamhub ÷ Ray |",
        "|---|---:|---:|---:|",
    ]
    for row in throughput:
        lines.append(
            f"| {row['row']} | {fmt(row['ray_steps_per_s'], 0)} "
            f"| {fmt(row['adamhub_steps_per_s'], 0)} | {fmt(row['ratio'])} |"
        )
    lines += ["", "| Redis bytes written per step ÷ gradient bytes | adamhub |", "|---:|---:|"]
    for row in written:
        lines.append(f"| {row['params']:,} | {row['ratio']:.3f} |")
    if huge:
        lines += ["", f"100M-parameter step through the SDK: {huge['adamhub_s']} s"]
    lines += [
        "",
        f"History recording, 1k step p50: {overhead['with_ms']} ms with, "
        f"{overhead['without_ms']} ms without ({overhead['overhead_pct']:+.1f}%)",
    ]
    if screening:
        lines += ["", "| step p50 (ms) | screened | not screened | cost |", "|---:|---:|---:|---:|"]
        for row in screening:
            lines.append(
                f"| {row['params']:,} | {row['with_ms']} | {row['without_ms']} "
                f"| {row['overhead_pct']:+.1f}% |"
            )
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
