"""What acknowledged writes cost: a plain step with ADAMHUB_REPLICA_ACKS=0 and =1, in one
run, against one primary (AOF everysec, as deployed) with one replica on this machine.

    make bench     (or: .venv/bin/python bench/bench_acks.py)

Writes bench/results/acks.json and acks.md.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import redis
from bench_step import gradient_of, write_results

import adamhub
from adamhub_service.testing import ServiceProcess, StoreServer

REPEATS = {1_000: 300, 1_000_000: 40}


def step_ms(base_url: str, size: int, repeats: int | None = None, warmup: int = 5) -> float:
    """Median latency of a plain step of ``size`` through the SDK (``repeats`` steps
    after ``warmup``; by default, ``REPEATS[size]``)."""
    gradient = gradient_of(size)
    with adamhub.Client(base_url=base_url, timeout=600) as client:
        session = client.create_session(size=size)
        times = []
        for _ in range((repeats or REPEATS[size]) + warmup):
            start = time.perf_counter()
            session.step(gradient)
            times.append((time.perf_counter() - start) * 1000)
        session.delete()
    return statistics.median(times[warmup:])


def main() -> None:
    """Measure, print the table, write it to bench/results."""
    primary = StoreServer(
        "--appendonly", "yes", "--appendfsync", "everysec", "--repl-diskless-sync-delay", "0"
    ).start()
    replica = StoreServer("--replicaof", "127.0.0.1", str(primary.port)).start()
    log = Path(tempfile.mkstemp(prefix="adamhub-bench-", suffix=".log")[1])
    services = {
        acks: ServiceProcess(
            "--redis-url", primary.url, "--replica-acks", str(acks), log_path=log
        ).start()
        for acks in (0, 1)
    }
    rows = []
    try:
        with redis.Redis(port=primary.port) as watching:
            while watching.info("replication").get("slave0", {}).get("state") != "online":
                time.sleep(0.05)
        for size in REPEATS:
            row: dict[str, float] = {"params": size}
            for acks, service in services.items():
                row[f"acks_{acks}_ms"] = round(step_ms(service.base_url, size), 2)
            rows.append(row)
            print(row, flush=True)
    finally:
        for service in services.values():
            service.stop()
        replica.cleanup()
        primary.cleanup()
    lines = [
        f"acknowledged writes, one run, {os.cpu_count()} CPUs, one local replica, "
        "plain steps through the SDK (median ms)",
        "",
        "| params | REPLICA_ACKS=0 | REPLICA_ACKS=1 | added ms |",
        "|---:|---:|---:|---:|",
    ]
    for row in rows:
        added = row["acks_1_ms"] - row["acks_0_ms"]
        lines.append(
            f"| {int(row['params']):,} | {row['acks_0_ms']:.2f} "
            f"| {row['acks_1_ms']:.2f} | {added:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    write_results("acks", table, {"rows": rows})


if __name__ == "__main__":
    main()
