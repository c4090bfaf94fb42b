"""Prometheus metrics of one app: requests, steps and their phases, rounds, refusals,
the store's writes.

With several worker processes (``serve --workers N``), ``PROMETHEUS_MULTIPROC_DIR``
names a folder where every process keeps its values (prometheus_client's multiprocess
mode), and a scrape of any of them answers the sum of all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PHASE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1, 2.5, 5)  # fmt: skip

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The metrics of one app, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "adamhub_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "adamhub_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.steps = Counter(
            "adamhub_steps",
            "Step requests answered 200: applied, or replayed for an Idempotency-Key.",
            ["outcome"],
            registry=self.registry,
        )
        self.conflicts = Counter(
            "adamhub_commit_conflicts",
            "Commits that lost the compare-and-set to another writer and were retried.",
            registry=self.registry,
        )
        self.contributions = Counter(
            "adamhub_round_contributions",
            "Contributions to rounds: taken, replayed, refused as stale, or taken out with "
            "a holder that died (and contributed again).",
            ["outcome"],
            registry=self.registry,
        )
        self.rounds = Counter(
            "adamhub_rounds_closed",
            "Rounds closed by this process: complete, at their deadline, or dropped (a "
            "mean step that would not be finite).",
            ["how"],
            registry=self.registry,
        )
        self.step_phases = Histogram(
            "adamhub_step_phase_seconds",
            "Time a step spends in each phase: reading its body, the math, the commit.",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            registry=self.registry,
        )
        self.screened = Counter(
            "adamhub_screened_gradients",
            "Gradients of screened sessions: accepted, refused as outliers or not finite, "
            "or refused because their worker is quarantined.",
            ["outcome"],
            registry=self.registry,
        )
        self.stale = Counter(
            "adamhub_stale_gradients",
            "Gradients refused as stale (409): beyond max_staleness, or not the open round's.",
            ["kind"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "adamhub_rate_limited",
            "Requests refused by a key's rate limit (429).",
            registry=self.registry,
        )
        self.snapshots = Counter(
            "adamhub_snapshots",
            "Snapshots of sessions written: committed, or not (superseded, store errors).",
            ["outcome"],
            registry=self.registry,
        )
        self.store_written_bytes = Counter(
            "adamhub_store_written_bytes",
            "Bytes of vectors written to the store (gradients, contributions, snapshots).",
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "adamhub_cache_bytes",
            "Bytes of session state cached (summed over the processes).",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self._cache_size: Callable[[], int] | None = None

    def watch_cache(self, size: Callable[[], int]) -> None:
        """Report ``size()`` as the cache's bytes (read after each request)."""
        self._cache_size = size

    def refresh(self) -> None:
        """Update the gauges this process reports."""
        if self._cache_size is not None:
            self.cache_bytes.set(self._cache_size())

    def render(self) -> bytes:
        """The Prometheus text exposition: this process's metrics, or with several
        processes, the sum over all of them."""
        self.refresh()
        if os.environ.get(MULTIPROCESS_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    @staticmethod
    def process_stopped() -> None:
        """Drop this process's live gauges from the multiprocess folder (at shutdown)."""
        if os.environ.get(MULTIPROCESS_ENV):
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI, so bodies stream through)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
            self.metrics.refresh()
