"""Synchronous rounds side by side with Ray's synchronous parameter server, in one run.

    make bench     (or: .venv/bin/python bench/bench_rounds.py [--quick])

Starts a private Redis (AOF everysec, as deployed) and `adamhub-service serve`, then
measures, binary float32:

- rounds per second (the better of two passes of each peer, alternating) with K worker
  *processes* contributing to one rounds session of
  K = 4 and 16 (``--workers`` chooses: 4 16 64 on a machine of many cores), at 1k and
  1M parameters; beside it, Ray's synchronous parameter server
  in the faster of two forms (Ray's own example, the driver gathering K worker actors'
  gradients with the parameters passed on as one shared object; and a barrier in an
  async server actor), in memory, no durability (needs the `bench` extra);
- the same at K = 4 through a replica of two worker processes (`--workers 2`): the
  contributions reaching the process that does not hold the round are stored for it;
- what the contribution that completes a round waits beyond a plain step of the same
  size (it averages the round's K contributions, steps and commits).

Writes bench/results/rounds.json and rounds.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from bench_step import gradient_of, numpy_adam, quiet_machine, ray_module, write_results

import adamhub
from adamhub_service.testing import ServiceProcess, StoreServer

SECONDS = 3.0
# About 2–4 s of rounds each, so that a pass is not one burst of noise.
ROUNDS = {1_000: 500, 1_000_000: 50}
PASSES = 2
SIZES = (1_000, 1_000_000)
LAST_REPEATS = {1_000: 60, 1_000_000: 15}


def _contributor(
    base_url: str, session_id: str, size: int, rounds: int, queue: Any, start: Any
) -> None:
    """Contribute to ``rounds`` rounds (every worker as many: each round needs all)
    once ``start`` is set."""
    with adamhub.Client(base_url=base_url) as client:
        session = client.session(session_id)
        gradient = gradient_of(size, os.getpid())
        session.step(gradient)  # a warm-up round
        queue.put("ready")
        start.wait()
        for _ in range(rounds):
            session.step(gradient)
    queue.put("done")


def adamhub_rounds_per_s(client: adamhub.Client, base_url: str, workers: int, size: int) -> float:
    session = client.create_session(size=size, rounds={"contributions": workers})
    context = mp.get_context("spawn")
    queue, start = context.Queue(), context.Event()
    rounds = ROUNDS[size]
    processes = [
        context.Process(
            target=_contributor, args=(base_url, session.id, size, rounds, queue, start)
        )
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        assert queue.get(timeout=300) == "ready"
    # Every worker is past its warm-up round: the rounds start together, on a quiet
    # machine.
    quiet_machine()
    start.set()
    started = time.perf_counter()
    for _ in processes:
        assert queue.get(timeout=300) == "done"
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join()
    session.refresh()
    assert session.t == rounds + 1, "every round closed once"
    session.delete()
    return rounds / elapsed


def last_contributor_extra_ms(
    client: adamhub.Client, base_url: str, store_url: str, size: int
) -> dict[str, float]:
    """Median latency of the contribution that completes a round of 4 while the other
    three wait for it (as in training), and of a plain step of the same size, through
    the SDK."""
    gradient = gradient_of(size)
    plain = client.create_session(size=size)
    rounds = client.create_session(size=size, rounds={"contributions": 4})
    round_key = f"adamhub:{{{rounds.id}}}:round"
    body = gradient.tobytes()
    headers = {"Content-Type": "application/octet-stream"}
    plain_ms, last_ms = [], []
    store = redis.Redis.from_url(store_url)
    others = [httpx.Client(base_url=base_url, timeout=60) for _ in range(3)]
    try:
        with ThreadPoolExecutor(3) as pool:
            for repeat in range(LAST_REPEATS[size] + 2):
                start = time.perf_counter()
                plain.step(gradient)
                plain_ms.append((time.perf_counter() - start) * 1000)
                waiting = [
                    pool.submit(other.post, f"/v1/sessions/{rounds.id}/step", content=body,
                                headers=headers)
                    for other in others
                ]  # fmt: skip
                while int(store.hget(round_key, "n") or 0) < 3:  # the three are in
                    time.sleep(0.0005)
                start = time.perf_counter()
                rounds.step(gradient)
                last_ms.append((time.perf_counter() - start) * 1000)
                assert rounds.t == repeat + 1
                assert [answer.result().status_code for answer in waiting] == [200] * 3
    finally:
        for other in others:
            other.close()
        store.close()
    plain.delete()
    rounds.delete()
    plain_median, last_median = statistics.median(plain_ms[2:]), statistics.median(last_ms[2:])
    return {
        "params": size,
        "plain_step_ms": round(plain_median, 2),
        "last_contribution_ms": round(last_median, 2),
        "extra_ms": round(last_median - plain_median, 2),
    }


class RaySyncPeer:
    """Ray's synchronous parameter server, as strong as Ray's own example makes it, in
    two forms (the faster counts):

    - *driver-gathered* (Ray's example): the server actor's answer is one shared object
      (``ray.put`` by Ray itself: an ObjectRef passed on, never copied per worker); each
      worker actor computes its gradient from it, the driver hands the server all K
      gradients' refs, the server applies their mean;
    - *barrier*: K worker actors loop on their own, each pushing its gradient to an async
      server actor that waits until all K are in, applies their mean once and returns
      the new parameters (one shared object) to all K.

    In memory, no durability, no retries."""

    def __init__(self, ray: Any) -> None:
        ray.init(
            num_cpus=max(8, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=40,
        )
        self.ray = ray

        @ray.remote(num_cpus=0)
        class ParameterServer:
            def __init__(self, size: int) -> None:
                self.p, self.m, self.v = (np.zeros(size, np.float32) for _ in range(3))
                self.t = 0

            def apply_gradients(self, *gradients: np.ndarray) -> np.ndarray:
                self.t += 1
                numpy_adam(self.p, self.m, self.v, np.mean(gradients, axis=0), self.t)
                return self.p

        @ray.remote(num_cpus=0)
        class Worker:
            def __init__(self, size: int) -> None:
                self.gradient = gradient_of(size, 1)

            def compute_gradients(self, params: np.ndarray) -> np.ndarray:
                gradient: np.ndarray = self.gradient
                return gradient

        @ray.remote(num_cpus=0)
        class BarrierServer:
            def __init__(self, size: int, workers: int) -> None:
                import asyncio

                self.p, self.m, self.v = (np.zeros(size, np.float32) for _ in range(3))
                self.t, self.workers = 0, workers
                self.gradients: list[np.ndarray] = []
                self.round = asyncio.get_event_loop().create_future()

            async def push(self, gradient: np.ndarray) -> Any:
                import asyncio

                current = self.round
                self.gradients.append(gradient)
                if len(self.gradients) == self.workers:
                    self.t += 1
                    numpy_adam(self.p, self.m, self.v, np.mean(self.gradients, axis=0), self.t)
                    self.gradients = []
                    self.round = asyncio.get_event_loop().create_future()
                    # One shared object for all K answers.
                    current.set_result([ray.put(self.p.copy())])
                return await current

        @ray.remote(num_cpus=0)
        class LoopingWorker:
            def __init__(self, size: int, server: Any) -> None:
                self.gradient = gradient_of(size, 1)
                self.server = server

            def run(self, rounds: int) -> int:
                for _ in range(rounds):
                    (params_ref,) = ray.get(self.server.push.remote(self.gradient))
                    ray.get(params_ref)  # the parameters, as a worker would read them
                return rounds

        self.server_class, self.worker_class = ParameterServer, Worker
        self.barrier_class, self.looping_class = BarrierServer, LoopingWorker

    def rounds_per_s(self, workers: int, size: int) -> dict[str, float]:
        """Rounds per second of each form: ``driver`` and ``barrier``, each on a quiet
        machine."""
        quiet_machine()
        driver = self._driver_gathered(workers, size)
        quiet_machine()
        return {"driver": driver, "barrier": self._barrier(workers, size)}

    def _driver_gathered(self, workers: int, size: int) -> float:
        ray = self.ray
        server = self.server_class.remote(size)  # type: ignore[attr-defined]
        actors = [self.worker_class.remote(size) for _ in range(workers)]  # type: ignore[attr-defined]
        params = ray.put(np.zeros(size, np.float32))

        def one_round(params: Any) -> Any:
            grads = [actor.compute_gradients.remote(params) for actor in actors]
            return server.apply_gradients.remote(*grads)

        ray.get(one_round(params))  # warm-up
        rounds, started = 0, time.perf_counter()
        while time.perf_counter() - started < SECONDS:
            params = one_round(params)
            ray.wait([params])  # the round is done: the next starts from its answer
            rounds += 1
        elapsed = time.perf_counter() - started
        for actor in [server, *actors]:
            ray.kill(actor)
        return rounds / elapsed

    def _barrier(self, workers: int, size: int) -> float:
        ray = self.ray
        server = self.barrier_class.remote(size, workers)  # type: ignore[attr-defined]
        actors = [self.looping_class.remote(size, server) for _ in range(workers)]  # type: ignore[attr-defined]
        ray.get([actor.run.remote(1) for actor in actors])  # warm-up
        # Calibrate the number of rounds to about SECONDS.
        started = time.perf_counter()
        ray.get([actor.run.remote(3) for actor in actors])
        per_round = (time.perf_counter() - started) / 3
        rounds = max(3, int(SECONDS / max(per_round, 1e-4)))
        started = time.perf_counter()
        ray.get([actor.run.remote(rounds) for actor in actors])
        elapsed = time.perf_counter() - started
        for actor in [server, *actors]:
            ray.kill(actor)
        return rounds / elapsed

    def close(self) -> None:
        self.ray.shutdown()


def main() -> None:
    """Run every measurement, print the table, write it to bench/results."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k only")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[4, 16], help="K, workers per round (4 16)"
    )
    args = parser.parse_args()
    sizes = SIZES[:1] if args.quick else SIZES
    rows = [(workers, size) for size in sizes for workers in args.workers]

    store = StoreServer("--appendonly", "yes", "--appendfsync", "everysec").start()
    log = Path(tempfile.mkstemp(prefix="adamhub-bench-", suffix=".log")[1])
    service = ServiceProcess("--redis-url", store.url, log_path=log).start()
    # A replica of two worker processes (as the compose file runs): a round's
    # contributions reach both, and those reaching the process that does not hold the
    # round are stored for it.
    pair = ServiceProcess("--redis-url", store.url, "--workers", "2", log_path=log).start()
    ray = ray_module()
    peer = RaySyncPeer(ray) if ray is not None else None
    note = "" if peer else "Ray is not installed (pip install -e '.[bench]'): its column is empty."
    rates: list[dict[str, Any]] = []
    last: list[dict[str, float]] = []
    try:
        with adamhub.Client(base_url=service.base_url, timeout=600) as client:
            for workers, size in rows:
                # PASSES passes of each peer, alternating, the best of each counted: a
                # machine that slows for a while (this one's speed drifts by a third
                # over minutes) slows both, not whichever ran then.
                forms: dict[str, float] | None = None
                ours = 0.0
                for _ in range(PASSES):
                    if peer:
                        this_pass = peer.rounds_per_s(workers, size)
                        forms = {
                            form: max(rate, (forms or {}).get(form, 0.0))
                            for form, rate in this_pass.items()
                        }
                    ours = max(ours, adamhub_rounds_per_s(client, service.base_url, workers, size))
                row: dict[str, Any] = {
                    "workers": workers,
                    "params": size,
                    "ray_forms": forms,
                    "ray_rounds_per_s": max(forms.values()) if forms else None,
                    "adamhub_rounds_per_s": ours,
                }
                row["two_processes_rounds_per_s"] = (
                    adamhub_rounds_per_s(client, pair.base_url, workers, size)
                    if workers == 4
                    else None
                )
                ours, theirs = row["adamhub_rounds_per_s"], row["ray_rounds_per_s"]
                row["ratio"] = None if theirs is None else round(ours / theirs, 2)
                rates.append(row)
                print(row, flush=True)
            for size in sorted({size for _, size in rows}):
                last.append(last_contributor_extra_ms(client, service.base_url, store.url, size))
                print(last[-1], flush=True)
    finally:
        if peer:
            peer.close()
        service.stop()
        pair.stop()
        store.cleanup()

    table = render(rates, last, note)
    document = {"machine": {"cpus": os.cpu_count()}, "rounds": rates, "last": last, "note": note}
    write_results("rounds", table, document)


def render(rates: list[dict[str, Any]], last: list[dict[str, float]], note: str) -> str:
    def fmt(value: float | None, digits: int = 1) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    lines = [
        f"rounds, one run ({PASSES} alternating passes of each peer, the better counted), "
        f"{os.cpu_count()} CPUs, binary float32, worker processes",
        "",
        "| rounds/s | Ray driver-gathered | Ray barrier | Ray (the faster) | adamhub "
        "| adamhub ÷ Ray | adamhub, 2 processes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rates:
        forms = row["ray_forms"] or {}
        lines.append(
            f"| {row['workers']} workers, {row['params']:,} params "
            f"| {fmt(forms.get('driver'))} | {fmt(forms.get('barrier'))} "
            f"| {fmt(row['ray_rounds_per_s'])} | {fmt(row['adamhub_rounds_per_s'])} "
            f"| {fmt(row['ratio'], 2)} | {fmt(row['two_processes_rounds_per_s'])} |"
        )
    lines += [
        "",
        "| the round's last contribution (K = 4, three waiting) | plain step ms "
        "| last contribution ms | extra ms |",
        "|---:|---:|---:|---:|",
    ]
    for row in last:
        lines.append(
            f"| {row['params']:,} | {row['plain_step_ms']:.2f} | {row['last_contribution_ms']:.2f} "
            f"| {row['extra_ms']:.2f} |"
        )
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
