"""One Redis against a Redis Cluster, in one run: the same work on each.

    make bench     (or: .venv/bin/python bench/bench_cluster.py [--no-100m])

Starts, on this machine, one Redis and a Redis Cluster of 3 primaries (AOF everysec on
every node, as deployed), and measures through the SDK, binary float32:

- many sessions at once: 8 worker processes, each stepping its own session of 1k, then
  of 100k parameters, for a few seconds (steps/s), through one service process and
  through 3 service replicas (workers spread over them);
- a plain step of 10M and 100M parameters (median ms), beside a Ray actor holding the
  state in memory (`bench` extra), and how the bytes the store received split across
  the cluster's primaries; on the cluster, the chunks spread over the primaries against
  kept in the session's slot (``ADAMHUB_SPREAD_CHUNKS=false``);
- what ``REPLICA_ACKS=1`` adds on a cluster with a replica per primary (3 + 3);
- HAProxy (deploy/haproxy.cfg) in front of 3 replicas: a hot session stepped through
  consistent hashing on its path (one replica holds it) and through round robin (every
  replica replays the others' steps).

Writes bench/results/cluster.json and cluster.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bench_acks
import redis
from bench_step import (
    RayPeer,
    _adamhub_worker,
    gradient_of,
    quiet_machine,
    ray_module,
    write_results,
)

import adamhub
from adamhub_service.testing import HAProxy, ServiceProcess, StoreCluster, StoreServer, free_port

AOF = ("--appendonly", "yes", "--appendfsync", "everysec")
WORKERS = 8
SECONDS = 4.0
STEP_REPEATS = {1_000: 200, 1_000_000: 20, 10_000_000: 12, 100_000_000: 3}
HAPROXY_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.cfg"


@contextmanager
def services(
    store_url: str, count: int, *args: str, env: dict[str, str] | None = None
) -> Iterator[list[ServiceProcess]]:
    """``count`` service processes on the store (with ``env`` besides their cache)."""
    log = Path(tempfile.mkstemp(prefix="adamhub-bench-", suffix=".log")[1])
    # A cache that holds a 100M session's state (θ, m, v: 1.2 GB), as bench_step's: one
    # that does not rebuilds it from the store at every step.
    settings = {"ADAMHUB_CACHE_BYTES": str(4 << 30), **(env or {})}
    started = [
        ServiceProcess("--redis-url", store_url, *args, env=settings, log_path=log).start()
        for _ in range(count)
    ]
    try:
        yield started
    finally:
        for service in started:
            service.stop()


def many_sessions(base_urls: Sequence[str], size: int) -> float:
    """Steps per second of WORKERS processes, each on its own session, spread over the
    service replicas ``base_urls``."""
    with adamhub.Client(base_url=base_urls[0], timeout=120) as client:
        ids = [client.create_session(size=size).id for _ in range(WORKERS)]
        context = mp.get_context("spawn")
        queue = context.Queue()
        processes = [
            context.Process(
                target=_adamhub_worker,
                args=(base_urls[n % len(base_urls)], ids[n], size, SECONDS, queue),
            )
            for n in range(WORKERS)
        ]
        for process in processes:
            process.start()
        counts = [queue.get(timeout=300) for _ in processes]
        for process in processes:
            process.join()
        assert sum(client.session(i).t for i in ids) == sum(counts) + WORKERS, "applied once"
        for session_id in ids:
            client.session(session_id).delete()
    return float(sum(counts)) / SECONDS


def step_ms(base_url: str, size: int) -> float:
    """Median latency of a plain step of ``size`` through the SDK, on a quiet machine."""
    quiet_machine()
    return bench_acks.step_ms(base_url, size, STEP_REPEATS[size], warmup=2)


def interleaved_ms(base_urls: dict[str, str], size: int) -> dict[str, float]:
    """Median latency of a plain step of ``size`` through each service, their steps
    interleaved (neither always first) so that both see the same machine."""
    gradient = gradient_of(size)
    quiet_machine()
    clients = {label: adamhub.Client(base_url=url, timeout=600) for label, url in base_urls.items()}
    sessions = {label: client.create_session(size=size) for label, client in clients.items()}
    times: dict[str, list[float]] = {label: [] for label in sessions}
    pairs = list(sessions.items())
    for index in range(STEP_REPEATS[size] + 2):
        for label, session in pairs if index % 2 else pairs[::-1]:
            start = time.perf_counter()
            session.step(gradient)
            if index >= 2:
                times[label].append((time.perf_counter() - start) * 1000)
    for label, session in sessions.items():
        session.delete()
        clients[label].close()
    return {label: round(statistics.median(values), 2) for label, values in times.items()}


def received_bytes(ports: Sequence[int]) -> list[int]:
    """Bytes each node has received so far."""
    counts = []
    for port in ports:
        with redis.Redis(port=port) as node:
            counts.append(int(node.info("stats")["total_net_input_bytes"]))
    return counts


def step_with_split(base_url: str, size: int, primaries: Sequence[int]) -> dict[str, Any]:
    """``step_ms`` of ``size``, and the share of the store's received bytes each primary
    took during it (%)."""
    before = received_bytes(primaries)
    ms = step_ms(base_url, size)
    after = received_bytes(primaries)
    grown = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(grown) or 1
    return {"ms": round(ms, 1), "split_pct": [round(100 * g / total) for g in grown]}


def primary_ports(cluster: StoreCluster) -> list[int]:
    return [node.port for node in cluster.nodes if cluster.cli(node, "ROLE").startswith("master")]


def balanced(replicas: Sequence[ServiceProcess], balance: str) -> HAProxy:
    """HAProxy with deploy/haproxy.cfg in front of ``replicas`` (``balance`` replaces its
    balance line: the consistent hashing it ships, or ``roundrobin``)."""
    front = free_port()
    config = HAPROXY_CONFIG.read_text().replace("bind :8000", f"bind 127.0.0.1:{front}")
    for n, replica in enumerate(replicas, start=1):
        config = config.replace(f"adamhub-{n}:8000", f"127.0.0.1:{replica.port}")
    config = re.sub(r"^(\s*)balance .*$", rf"\1balance {balance}", config, flags=re.M)
    return HAProxy(config, front).start()


def main() -> None:
    """Run every measurement, print the tables, write them to bench/results."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--no-100m", action="store_true", help="leave out the 100M step")
    args = parser.parse_args()
    big = [10_000_000] if args.no_100m else [10_000_000, 100_000_000]
    document: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}}

    ray = ray_module()
    peer = RayPeer(ray) if ray is not None else None
    try:
        quiet_machine()
        document["ray_step_ms"] = {
            str(size): round(peer.step_ms(size), 1) if peer else None for size in big[:1]
        }
    finally:
        if peer:
            peer.close()

    store = StoreServer(*AOF).start()
    cluster = StoreCluster(3, 0, *AOF).start()
    try:
        rows: dict[str, dict[str, Any]] = {}
        for label, url, cluster_args, ports in (
            ("one Redis", store.url, (), [store.port]),
            ("cluster, 3 primaries", cluster.url, ("--redis-cluster",), primary_ports(cluster)),
        ):
            row: dict[str, Any] = {}
            with services(url, 1, *cluster_args) as (one,):
                row["1k_steps_per_s"] = round(many_sessions([one.base_url], 1_000))
                row["100k_steps_per_s"] = round(many_sessions([one.base_url], 100_000))
                for size in big:
                    row[f"{size // 1_000_000}M_step"] = step_with_split(one.base_url, size, ports)
            with services(url, 3, *cluster_args) as three:
                urls = [service.base_url for service in three]
                row["1k_steps_per_s_3_replicas"] = round(many_sessions(urls, 1_000))
                row["100k_steps_per_s_3_replicas"] = round(many_sessions(urls, 100_000))
            rows[label] = row
            print(label, row, flush=True)
        document["stores"] = rows
        # The same big steps on the cluster, the chunks spread over the primaries or in
        # the session's slot, interleaved.
        in_slot = {"ADAMHUB_SPREAD_CHUNKS": "false"}
        with (
            services(cluster.url, 1, "--redis-cluster") as (spread,),
            services(cluster.url, 1, "--redis-cluster", env=in_slot) as (kept,),
        ):
            both = {"spread_ms": spread.base_url, "in_slot_ms": kept.base_url}
            document["spread"] = [{"params": size, **interleaved_ms(both, size)} for size in big]
        print(document["spread"], flush=True)
    finally:
        store.cleanup()
        cluster.cleanup()

    with_replicas = StoreCluster(3, 1, *AOF).start()
    try:
        acks = []
        with (
            services(with_replicas.url, 1, "--redis-cluster") as (plain,),
            services(with_replicas.url, 1, "--redis-cluster", "--replica-acks", "1") as (acked,),
        ):
            for size in (1_000, 1_000_000):
                p50 = interleaved_ms(
                    {"acks_0_ms": plain.base_url, "acks_1_ms": acked.base_url}, size
                )
                acks.append({"params": size, **p50})
                print(acks[-1], flush=True)
        document["acks"] = acks
        affinity = []
        with services(with_replicas.url, 3, "--redis-cluster") as three:
            for size in (1_000, 1_000_000):
                row = {"params": size}
                for balance in ("uri depth 3", "roundrobin"):
                    balancer = balanced(three, balance)
                    try:
                        row[balance] = round(step_ms(balancer.base_url, size), 2)
                    finally:
                        balancer.stop()
                affinity.append(row)
                print(row, flush=True)
        document["affinity"] = affinity
    finally:
        with_replicas.cleanup()

    table = render(document)
    write_results("cluster", table, document)


def stores_head(title: str, document: dict[str, Any], labels: Sequence[str]) -> list[str]:
    """The title line and the head of a table with a column per store."""
    return [
        f"{title}, one run, {document['machine']['cpus']} CPUs, "
        "AOF everysec, binary float32 through the SDK",
        "",
        "| work | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]


def render(document: dict[str, Any]) -> str:
    stores = document["stores"]
    labels = list(stores)
    lines = stores_head("one Redis against a Redis Cluster", document, labels)
    for key, name in (
        ("1k_steps_per_s", f"{WORKERS} workers × own 1k session, 1 replica (steps/s)"),
        ("1k_steps_per_s_3_replicas", f"{WORKERS} workers × own 1k session, 3 replicas"),
        ("100k_steps_per_s", f"{WORKERS} workers × own 100k session, 1 replica (steps/s)"),
        ("100k_steps_per_s_3_replicas", f"{WORKERS} workers × own 100k session, 3 replicas"),
    ):
        lines.append(f"| {name} | " + " | ".join(str(stores[s][key]) for s in labels) + " |")
    ray = document.get("ray_step_ms", {})
    for key in [k for k in stores[labels[0]] if k.endswith("M_step")]:
        cells = []
        for s in labels:
            cell = stores[s][key]
            split = "/".join(str(p) for p in cell["split_pct"])
            cells.append(f"{cell['ms']} ms (bytes by primary, %: {split})")
        peer = ray.get(str(int(key[:-6]) * 1_000_000))
        name = f"a {key[:-5]} step" + (f" (Ray actor {peer} ms)" if peer else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| a big step on the cluster, interleaved | chunks spread ms | in the session's slot ms |",
        "|---:|---:|---:|",
    ]
    for row in document["spread"]:
        lines.append(f"| {row['params']:,} | {row['spread_ms']} | {row['in_slot_ms']} |")
    lines += [
        "",
        "| plain step, cluster 3 + 3 replicas | REPLICA_ACKS=0 ms | REPLICA_ACKS=1 ms |",
        "|---:|---:|---:|",
    ]
    for row in document["acks"]:
        lines.append(f"| {row['params']:,} | {row['acks_0_ms']} | {row['acks_1_ms']} |")
    lines += [
        "",
        "| hot session through HAProxy, 3 replicas | affinity (uri depth 3) ms | round robin ms |",
        "|---:|---:|---:|",
    ]
    for row in document["affinity"]:
        lines.append(f"| {row['params']:,} | {row['uri depth 3']} | {row['roundrobin']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
