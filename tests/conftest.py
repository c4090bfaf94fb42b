"""Fixtures: a private store for the whole run, flushed before each test.

``ADAMHUB_TEST_STORE=cluster`` makes the store a Redis Cluster of three primaries (the
service under test then runs with ``ADAMHUB_REDIS_CLUSTER=true``): `make test` runs the
suites that touch the store both ways.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from adamhub_service.testing import ServiceProcess, StoreCluster, StoreServer

CLUSTER = os.environ.get("ADAMHUB_TEST_STORE") == "cluster"


class WholeCluster(redis.RedisCluster):
    """A cluster client whose ``KEYS`` and ``INFO`` answer for every primary (redis-py
    asks one): the keys of all, and the sum of their counters."""

    def keys(self, pattern: Any = "*", **kwargs: Any) -> Any:
        return super().keys(pattern, target_nodes=redis.RedisCluster.PRIMARIES, **kwargs)

    def info(self, section: Any = None, *args: Any, **kwargs: Any) -> Any:
        each = super().info(section, *args, target_nodes=redis.RedisCluster.PRIMARIES, **kwargs)
        total: dict[str, Any] = {}
        for reply in each.values():
            for name, value in reply.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    total[name] = total.get(name, 0) + value
        return total


def store_client(url: str) -> redis.Redis:
    """A synchronous client of the test store (of its cluster, in a cluster run)."""
    if CLUSTER:
        return cast(redis.Redis, WholeCluster.from_url(url))
    return redis.Redis.from_url(url)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A cluster run leaves out what is about one Redis (``standalone_only``; the run on
    one Redis has it)."""
    if not CLUSTER:
        return
    left_out = [item for item in items if item.get_closest_marker("standalone_only")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not item.get_closest_marker("standalone_only")]


@pytest.fixture(scope="session")
def store_mode() -> dict[str, object]:
    """How the test store is deployed, as ``/readyz`` reports it."""
    if CLUSTER:
        return {"mode": "cluster", "primaries": 3, "replicas": 0}
    return {"mode": "standalone", "primaries": 1, "replicas": 0}


@pytest.fixture(scope="session")
def store_url() -> Iterator[str]:
    """A private Redis, or Redis Cluster (``ADAMHUB_TEST_STORE=cluster``), or
    ``ADAMHUB_TEST_REDIS_URL``, for this test run."""
    given = os.environ.get("ADAMHUB_TEST_REDIS_URL")
    if given:
        yield given
        return
    if CLUSTER:
        os.environ["ADAMHUB_REDIS_CLUSTER"] = "true"  # the apps and services under test
        cluster = StoreCluster(primaries=3).start()
        try:
            yield cluster.url
        finally:
            cluster.cleanup()
        return
    server = StoreServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(store_url: str) -> str:
    """The store's URL, emptied before the test."""
    client = store_client(store_url)
    client.flushall()
    client.close()
    return store_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client of the (empty) test store, to look at what the service wrote."""
    client = store_client(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def service_url(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``adamhub-service serve`` on the test store, shared by the tests that only
    need some service (each works on sessions of its own)."""
    log = tmp_path_factory.mktemp("service") / "service.log"
    service = ServiceProcess("--redis-url", store_url, log_path=log).start()
    try:
        yield service.base_url
    finally:
        service.stop()
