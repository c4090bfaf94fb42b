"""Fixtures: a private store server for the whole run, flushed before each test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from adamhub_service.testing import ServiceProcess, StoreServer


@pytest.fixture(scope="session")
def store_url() -> Iterator[str]:
    """A private Redis (or ``ADAMHUB_TEST_REDIS_URL``) for this test run."""
    given = os.environ.get("ADAMHUB_TEST_REDIS_URL")
    if given:
        yield given
        return
    server = StoreServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(store_url: str) -> str:
    """The store's URL, emptied before the test."""
    client = redis.Redis.from_url(store_url)
    client.flushall()
    client.close()
    return store_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client of the (empty) test store, to look at what the service wrote."""
    client = redis.Redis.from_url(redis_url)
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
