"""Prometheus metrics of one app: requests by route and status, steps, lost races."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
            "Contributions to rounds: taken, replayed, or refused as stale.",
            ["outcome"],
            registry=self.registry,
        )
        self.rounds = Counter(
            "adamhub_rounds_closed",
            "Rounds closed by this process: complete, or at their deadline.",
            ["how"],
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "adamhub_cache_bytes",
            "Bytes of session state cached in this process.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


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
