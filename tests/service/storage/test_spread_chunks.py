"""Spread sessions: chunk ``i`` of every vector in a slot of its own, so that a big
session's bytes go to every primary of a cluster; registered before they are written,
claimed by the commit, deleted once retired or never committed (``storage/garbage.py``).

The same on one Redis, where the one node holds them all. A large gradient is staged:
its chunks start for the store before its step is computed (``steps/commit.py``); what
a staged write leaves is what a plain one leaves, spread or not."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from adamhub_service import errors
from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.model.outcomes import WriteStatus
from adamhub_service.model.principal import LOCAL
from adamhub_service.model.records import new_write_id
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import AdamConfig
from adamhub_service.sessions.service import NewSession, SessionLimits, SessionService
from adamhub_service.steps.commit import STAGE_BYTES, Commit
from adamhub_service.steps.service import StepService
from adamhub_service.steps.values import compute_step
from adamhub_service.storage.connection import Storage, StorageOptions, connect
from adamhub_service.storage.keyspace import (
    SPREAD_SESSIONS_KEY,
    batches_key,
    chunk_keys,
    meta_key,
)
from adamhub_service.storage.scripts import register
from adamhub_service.testing import LOOPBACK

SIZE = 3_000
CHUNK = 100  # 30 chunks a vector


def open_store(
    redis_url: str,
    *,
    spread: bool = True,
    pending_write_ttl_ms: int = 60_000,
    chunk_elements: int = CHUNK,
    max_size: int = SIZE,
) -> tuple[Storage, SessionService, StepService]:
    storage = Storage.over(
        connect(redis_url, timeout_seconds=5, max_connections=8, cluster=Settings().redis_cluster),
        StorageOptions(pending_write_ttl_ms=pending_write_ttl_ms, cache_bytes=0),
    )
    sessions = SessionService(
        storage.sessions,
        storage.tenants,
        storage.create_keys,
        storage.expiry,
        chunk_elements=chunk_elements,
        spread_chunks=spread,
        limits=SessionLimits(
            max_size=max_size, tenant_max_sessions=100, tenant_max_parameters=10**8
        ),
        idempotency_ttl_seconds=60,
    )
    return storage, sessions, StepService(storage.sessions, Metrics(), idempotency_ttl_seconds=60)


def gradient(index: int) -> np.ndarray:
    return np.random.default_rng(index).normal(size=SIZE).astype(np.float32)


def nodes_holding(client: redis.Redis, keys: list[Any]) -> set[str]:
    """The nodes that serve ``keys`` (one Redis: itself)."""
    if not isinstance(client, redis.RedisCluster):
        return {"the one Redis"} if keys else set()
    return {client.get_node_from_key(key).name for key in keys}


def primaries(client: redis.Redis) -> int:
    return len(client.get_primaries()) if isinstance(client, redis.RedisCluster) else 1


def session_keys(client: redis.Redis, session_id: str) -> list[Any]:
    return list(client.keys(f"adamhub:{{{session_id}*"))


def test_a_spread_session_uses_every_primary_and_reads_back_exactly(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        storage, sessions, steps = open_store(redis_url)
        start = np.linspace(-1, 1, SIZE, dtype=np.float32)
        created = await sessions.create(NewSession("float32", AdamConfig(), params=start), LOCAL)
        session_id = created.record.id
        for index in range(5):
            answered = await steps.step(session_id, gradient(index))
        chunks = list(redis_client.keys(f"adamhub:{{{session_id}:*}}:c:*"))
        # Three vectors of the snapshot and five logged gradients, 30 chunks each.
        assert len(chunks) == (3 + 5) * SIZE // CHUNK
        assert redis_client.keys(f"adamhub:{{{session_id}}}:c:*") == []
        assert len(nodes_holding(redis_client, chunks)) == primaries(redis_client)
        # Nothing is left registered as being written.
        assert redis_client.zcard(batches_key(session_id)) == 0
        # Another process (no cache) rebuilds the same bits from the spread chunks.
        other, other_sessions, _ = open_store(redis_url)
        _, params = await other_sessions.params(session_id, LOCAL)
        assert params is not None and np.array_equal(params, answered.params)
        await other.close()
        await storage.close()

    asyncio.run(scenario())


def test_retired_and_deleted_chunks_go_right_after_their_commit(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A reset retires a spread session's log and snapshot, as it does a session's in
    its slot; a delete leaves nothing of either."""

    async def scenario() -> None:
        storage, sessions, steps = open_store(redis_url)
        plain_storage, plain_sessions, plain_steps = open_store(redis_url, spread=False)
        spread_id = (
            await sessions.create(NewSession("float32", AdamConfig(), size=SIZE), LOCAL)
        ).record.id
        plain_id = (
            await plain_sessions.create(NewSession("float32", AdamConfig(), size=SIZE), LOCAL)
        ).record.id
        for index in range(4):
            await steps.step(spread_id, gradient(index))
            await plain_steps.step(plain_id, gradient(index))
        for session_id, service in ((spread_id, sessions), (plain_id, plain_sessions)):
            await service.replace_params(session_id, np.zeros(SIZE, np.float32), LOCAL)
        spread_chunks = redis_client.keys(f"adamhub:{{{spread_id}:*}}:c:*")
        plain_chunks = redis_client.keys(f"adamhub:{{{plain_id}}}:c:*")
        assert len(spread_chunks) == len(plain_chunks) == 3 * SIZE // CHUNK
        assert redis_client.scard(f"adamhub:{{{spread_id}}}:garbage") == 0
        for session_id, service in ((spread_id, sessions), (plain_id, plain_sessions)):
            await service.delete(session_id, LOCAL)
            assert session_keys(redis_client, session_id) == []
        await storage.close()
        await plain_storage.close()

    asyncio.run(scenario())


def test_a_write_that_never_commits_is_swept_and_can_no_longer_commit(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A process dies between writing a spread session's chunks and committing them:
    within the TTL its batch stays (it may still commit); past it, a sweep deletes the
    chunks, and a commit that comes late is refused as expired."""

    async def scenario() -> None:
        storage, _, _ = open_store(redis_url, pending_write_ttl_ms=300)
        garbage = storage.chunk_garbage
        session_id = "s_" + new_write_id() * 2
        keys = chunk_keys(session_id, new_write_id(), ("p", "m", "v"), 4, spread=True)
        batch = await garbage.register(session_id, keys)
        for key in keys:
            redis_client.set(key, b"\0" * 8)
        await garbage.sweep()  # within the TTL: a write in flight is left alone
        assert redis_client.exists(*keys) == len(keys)
        assert redis_client.zscore(SPREAD_SESSIONS_KEY, session_id) is not None
        await asyncio.sleep(0.4)
        await garbage.sweep()
        assert redis_client.exists(*keys) == 0
        assert not redis_client.exists(batch)
        assert redis_client.zcard(batches_key(session_id)) == 0
        # The late commit (a create) finds its batch gone: refused, nothing written.
        commit: Any = register(storage.client, "commit")
        reply = await commit(keys=[meta_key(session_id), batch], args=["", "", "t", 0])
        assert int(reply[0]) == 6  # EXPIRED
        assert not redis_client.exists(meta_key(session_id))
        # Gone for longer than twice the TTL: no longer noted for sweeps.
        await asyncio.sleep(0.3)
        await garbage.sweep()
        assert redis_client.zscore(SPREAD_SESSIONS_KEY, session_id) is None
        await storage.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("spread", [True, False])
def test_the_service_spreads_sessions_of_several_chunks_on_a_cluster_unless_told_not_to(
    redis_url: str, redis_client: redis.Redis, spread: bool
) -> None:
    settings = Settings(redis_url=redis_url, chunk_elements=4, spread_chunks=spread)
    with TestClient(create_app(settings), client=LOOPBACK) as client:
        several = client.post("/v1/sessions", json={"size": 10}).json()["id"]
        one = client.post("/v1/sessions", json={"size": 4}).json()["id"]
    expected = b"1" if spread and settings.redis_cluster else b"0"
    assert redis_client.hget(meta_key(several), "spread") == expected
    assert redis_client.hget(meta_key(one), "spread") == b"0"


# Past the staging threshold, in a few chunks.
LARGE = STAGE_BYTES // 4 + 1_000
LARGE_CHUNK = 1 << 16


def large_gradient(index: int) -> np.ndarray:
    return np.random.default_rng(index).normal(size=LARGE).astype(np.float32)


def chunk_keys_of(client: redis.Redis, session_id: str) -> set[Any]:
    """Every chunk of the session, in its slot or spread."""
    return set(client.keys(f"adamhub:{{{session_id}}}:c:*")) | set(
        client.keys(f"adamhub:{{{session_id}:*}}:c:*")
    )


async def until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("spread", [True, False], ids=["spread", "in-its-slot"])
def test_a_staged_gradient_is_in_the_store_before_its_step_and_commits_replayable(
    redis_url: str, redis_client: redis.Redis, spread: bool
) -> None:
    async def scenario() -> None:
        storage, sessions, _ = open_store(
            redis_url, spread=spread, chunk_elements=LARGE_CHUNK, max_size=LARGE
        )
        created = await sessions.create(NewSession("float32", AdamConfig(), size=LARGE), LOCAL)
        session_id = created.record.id
        before = chunk_keys_of(redis_client, session_id)
        current = await storage.sessions.load(session_id)
        commit = Commit(current)
        grad = large_gradient(1)
        commit.stage(storage.sessions, current.config, grad)
        # Its chunks reach the store with nothing computed yet.
        expected = -(-LARGE // LARGE_CHUNK)
        await until(lambda: len(chunk_keys_of(redis_client, session_id) - before) == expected)
        state = await compute_step(current.state, grad, current.config)
        await commit.add(state, current.config, grad, grad)
        outcome = await commit.run(storage.sessions, Metrics(), idempotency_ttl_ms=60_000)
        assert outcome.status is WriteStatus.COMMITTED
        logged = chunk_keys_of(redis_client, session_id) - before
        assert len(logged) == expected
        assert all(redis_client.ttl(key) == -1 for key in logged)  # persisted
        assert redis_client.zcard(batches_key(session_id)) == 0
        # Another process (no cache) replays the log to the same bits.
        other, other_sessions, _ = open_store(
            redis_url, spread=spread, chunk_elements=LARGE_CHUNK, max_size=LARGE
        )
        _, params = await other_sessions.params(session_id, LOCAL)
        assert params is not None and np.array_equal(params, state.params)
        await other.close()
        await storage.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("spread", [True, False], ids=["spread", "in-its-slot"])
def test_a_staged_gradient_that_does_not_commit_leaves_nothing(
    redis_url: str, redis_client: redis.Redis, spread: bool
) -> None:
    """Released unused, beaten by another writer, or refused as not finite: its chunks
    are deleted at once (not left to expire)."""

    async def scenario() -> None:
        storage, sessions, steps = open_store(
            redis_url, spread=spread, chunk_elements=LARGE_CHUNK, max_size=LARGE
        )
        created = await sessions.create(NewSession("float32", AdamConfig(), size=LARGE), LOCAL)
        session_id = created.record.id
        start = chunk_keys_of(redis_client, session_id)

        # Released without a run.
        current = await storage.sessions.load(session_id)
        unused = Commit(current)
        unused.stage(storage.sessions, current.config, large_gradient(2))
        await unused.release()
        assert chunk_keys_of(redis_client, session_id) == start

        # Beaten: another writer steps the session between its stage and its run.
        late, beaten = Commit(current), large_gradient(3)
        late.stage(storage.sessions, current.config, beaten)
        expected = -(-LARGE // LARGE_CHUNK)
        await until(lambda: len(chunk_keys_of(redis_client, session_id) - start) == expected)
        staged = chunk_keys_of(redis_client, session_id) - start
        state = await compute_step(current.state, beaten, current.config)
        await late.add(state, current.config, beaten, beaten)
        winner = await steps.step(session_id, large_gradient(4))
        after_winner = chunk_keys_of(redis_client, session_id)
        assert staged < after_winner
        outcome = await late.run(storage.sessions, Metrics(), idempotency_ttl_ms=60_000)
        assert outcome.status is WriteStatus.CONFLICT
        after_winner -= staged
        assert chunk_keys_of(redis_client, session_id) == after_winner
        assert redis_client.zcard(batches_key(session_id)) == 0

        # Refused: the step would overflow the second moment.
        huge = np.full(LARGE, 3e38, np.float32)
        with pytest.raises(errors.NonFiniteUpdate):
            await steps.step(session_id, huge)
        # Deleted by the group's task right after it answered the refusal.
        await until(lambda: chunk_keys_of(redis_client, session_id) == after_winner)
        await until(lambda: redis_client.zcard(batches_key(session_id)) == 0)
        _, params = await sessions.params(session_id, LOCAL)
        assert params is not None and np.array_equal(params, winner.params)
        await storage.close()

    asyncio.run(scenario())
