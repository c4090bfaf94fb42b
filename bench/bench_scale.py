"""Scale on a machine of many cores: one Redis against Redis Clusters of more primaries.

    .venv/bin/python bench/bench_scale.py [--replicas R] [--workers W] [--primaries 3 6]

`make bench` measures a 2-core box, where the store, the service and the workers share
two cores. This runs the same work with room to grow (16 cores: 8 service replicas, 32
worker processes by default) on one Redis and on clusters of 3 and 6 primaries (AOF
everysec on every node, no replicas), through the SDK, binary float32:

- many sessions at once: W worker processes, each stepping its own session of 1k, then
  of 100k parameters, spread over R service replicas; every worker starts at the same
  moment and stops at the same deadline (steps/s, and what the store received, MB/s);
- a plain step of 10M and 100M parameters through one service process (median ms),
  and how the store's received bytes split across the primaries, beside a Ray actor
  holding the state in memory (`bench` extra).

Writes bench/results/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from typing import Any

from bench_cluster import (
    AOF,
    STEP_REPEATS,
    primary_ports,
    received_bytes,
    services,
    step_with_split,
    stores_head,
)
from bench_step import RayPeer, gradient_of, ray_module, write_results

import adamhub
from adamhub_service.testing import StoreCluster, StoreServer

SECONDS = 5.0
SIZES = (1_000, 100_000)
BIG = (10_000_000, 100_000_000)


def _stepper(
    base_url: str, session_id: str, size: int, start: Any, stop_at: Any, queue: Any
) -> None:
    """Step one session from the shared start until the shared deadline; report the count."""
    with adamhub.Client(base_url=base_url, timeout=120) as client:
        session = client.session(session_id)
        gradient = gradient_of(size)
        session.step(gradient)  # warm: connection, the service's cache
        queue.put("ready")
        start.wait()
        done, deadline = 0, stop_at.value
        while time.time() < deadline:
            session.step(gradient)
            done += 1
    queue.put(done)


def many_sessions(
    base_urls: Sequence[str], size: int, workers: int, ports: Sequence[int]
) -> dict[str, float]:
    """Steps per second of ``workers`` processes, each on its own session of ``size``,
    spread over the replicas ``base_urls``, and the store's intake (MB/s) meanwhile."""
    with adamhub.Client(base_url=base_urls[0], timeout=120) as client:
        ids = [client.create_session(size=size).id for _ in range(workers)]
        context = mp.get_context("spawn")
        queue, start = context.Queue(), context.Event()
        stop_at = context.Value("d", 0.0)
        processes = [
            context.Process(
                target=_stepper,
                args=(base_urls[n % len(base_urls)], ids[n], size, start, stop_at, queue),
            )
            for n in range(workers)
        ]
        for process in processes:
            process.start()
        for _ in processes:
            assert queue.get(timeout=300) == "ready"
        before = received_bytes(ports)
        stop_at.value = time.time() + SECONDS
        start.set()
        counts = [queue.get(timeout=300) for _ in processes]
        intake = sum(received_bytes(ports)) - sum(before)
        for process in processes:
            process.join()
        assert sum(client.session(i).t for i in ids) == sum(counts) + workers, "applied once"
        for session_id in ids:
            client.session(session_id).delete()
    return {
        "steps_per_s": round(sum(counts) / SECONDS),
        "store_mb_per_s": round(intake / SECONDS / 1e6),
    }


def main() -> None:
    """Run every measurement, print the tables, write them to bench/results."""
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--replicas", type=int, default=max(1, cpus // 2))
    parser.add_argument("--workers", type=int, default=max(8, 2 * cpus))
    parser.add_argument("--primaries", type=int, nargs="*", default=[3, 6])
    parser.add_argument("--no-100m", action="store_true", help="leave out the 100M step")
    args = parser.parse_args()
    big = BIG[:1] if args.no_100m else BIG
    document: dict[str, Any] = {
        "machine": {"cpus": cpus},
        "replicas": args.replicas,
        "workers": args.workers,
        "stores": {},
    }

    ray = ray_module()
    peer = RayPeer(ray) if ray is not None else None
    try:
        document["ray_step_ms"] = {
            str(size): round(peer.step_ms(size, STEP_REPEATS[size]), 1) if peer else None
            for size in big
        }
    finally:
        if peer:
            peer.close()
    print("ray", document["ray_step_ms"], flush=True)

    stores: list[tuple[str, Any, tuple[str, ...]]] = [("one Redis", StoreServer(*AOF), ())]
    stores += [
        (f"cluster, {n} primaries", StoreCluster(n, 0, *AOF), ("--redis-cluster",))
        for n in args.primaries
    ]
    for label, store, flags in stores:
        store.start()
        try:
            ports = primary_ports(store) if flags else [store.port]
            row: dict[str, Any] = {}
            with services(store.url, args.replicas, *flags) as replicas:
                urls = [replica.base_url for replica in replicas]
                for size in SIZES:
                    row[str(size)] = many_sessions(urls, size, args.workers, ports)
                    print(label, size, row[str(size)], flush=True)
            with services(store.url, 1, *flags) as (one,):
                for size in big:
                    row[str(size)] = step_with_split(one.base_url, size, ports)
                    print(label, size, row[str(size)], flush=True)
            document["stores"][label] = row
        finally:
            store.cleanup()

    table = render(document)
    write_results("scale", table, document)


def render(document: dict[str, Any]) -> str:
    stores = document["stores"]
    labels = list(stores)
    workers, replicas = document["workers"], document["replicas"]
    lines = stores_head("one Redis against Redis Clusters", document, labels)
    for size in SIZES:
        measured = [stores[s][str(size)] for s in labels]
        cells = [f"{m['steps_per_s']:,} ({m['store_mb_per_s']:,} MB/s in)" for m in measured]
        lines.append(
            f"| {workers} workers × own {size:,} session, {replicas} replicas (steps/s) | "
            + " | ".join(cells)
            + " |"
        )
    ray = document.get("ray_step_ms", {})
    for size in [size for size in BIG if str(size) in stores[labels[0]]]:
        cells = []
        for s in labels:
            cell = stores[s][str(size)]
            split = "/".join(str(p) for p in cell["split_pct"])
            cells.append(f"{cell['ms']} ms ({split} %)")
        peer = ray.get(str(size))
        name = f"a {size // 1_000_000}M step, 1 replica" + (
            f" (Ray actor {peer} ms)" if peer else ""
        )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Big steps: median ms (the store's received bytes by primary, %)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
