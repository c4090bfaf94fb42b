"""A large gradient is staged: its chunks start for the store before its step is
computed, and the commit's round trip carries only the script (``steps/commit.py``).
What a staged write leaves is what a plain one leaves: the committed gradient,
persisted and replayable; nothing of one that did not commit.

Spread (a slot per chunk) and not, on one Redis and on the cluster."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
import redis

from adamhub_service import errors
from adamhub_service.config import Settings
from adamhub_service.model.outcomes import WriteStatus
from adamhub_service.model.principal import LOCAL
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import AdamConfig
from adamhub_service.sessions.service import NewSession, SessionLimits, SessionService
from adamhub_service.steps.commit import STAGE_BYTES, Commit
from adamhub_service.steps.service import StepService
from adamhub_service.steps.values import compute_step
from adamhub_service.storage.connection import Storage, StorageOptions, connect
from adamhub_service.storage.keyspace import batches_key

# Past the staging threshold, in a few chunks.
SIZE = STAGE_BYTES // 4 + 1_000
CHUNK = 1 << 16


def open_store(redis_url: str, *, spread: bool) -> tuple[Storage, SessionService, StepService]:
    storage = Storage.over(
        connect(redis_url, timeout_seconds=5, max_connections=8, cluster=Settings().redis_cluster),
        StorageOptions(pending_write_ttl_ms=60_000, cache_bytes=1 << 30),
    )
    sessions = SessionService(
        storage.sessions,
        storage.tenants,
        storage.create_keys,
        storage.expiry,
        chunk_elements=CHUNK,
        spread_chunks=spread,
        limits=SessionLimits(max_size=SIZE, tenant_max_sessions=100, tenant_max_parameters=10**8),
        idempotency_ttl_seconds=60,
    )
    return storage, sessions, StepService(storage.sessions, Metrics(), idempotency_ttl_seconds=60)


def gradient(index: int) -> np.ndarray:
    return np.random.default_rng(index).normal(size=SIZE).astype(np.float32)


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
        storage, sessions, _ = open_store(redis_url, spread=spread)
        created = await sessions.create(NewSession("float32", AdamConfig(), size=SIZE), LOCAL)
        session_id = created.record.id
        before = chunk_keys_of(redis_client, session_id)
        current = await storage.sessions.load(session_id)
        commit = Commit(current)
        grad = gradient(1)
        commit.stage(storage.sessions, current.config, grad)
        # Its chunks reach the store with nothing computed yet.
        expected = -(-SIZE // CHUNK)
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
        other, other_sessions, _ = open_store(redis_url, spread=spread)
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
        storage, sessions, steps = open_store(redis_url, spread=spread)
        created = await sessions.create(NewSession("float32", AdamConfig(), size=SIZE), LOCAL)
        session_id = created.record.id
        start = chunk_keys_of(redis_client, session_id)

        # Released without a run.
        current = await storage.sessions.load(session_id)
        unused = Commit(current)
        unused.stage(storage.sessions, current.config, gradient(2))
        await unused.release()
        assert chunk_keys_of(redis_client, session_id) == start

        # Beaten: another writer steps the session between its stage and its run.
        late, beaten = Commit(current), gradient(3)
        late.stage(storage.sessions, current.config, beaten)
        expected = -(-SIZE // CHUNK)
        await until(lambda: len(chunk_keys_of(redis_client, session_id) - start) == expected)
        staged = chunk_keys_of(redis_client, session_id) - start
        state = await compute_step(current.state, beaten, current.config)
        await late.add(state, current.config, beaten, beaten)
        winner = await steps.step(session_id, gradient(4))
        after_winner = chunk_keys_of(redis_client, session_id)
        assert staged < after_winner
        outcome = await late.run(storage.sessions, Metrics(), idempotency_ttl_ms=60_000)
        assert outcome.status is WriteStatus.CONFLICT
        after_winner -= staged
        assert chunk_keys_of(redis_client, session_id) == after_winner
        assert redis_client.zcard(batches_key(session_id)) == 0

        # Refused: the step would overflow the second moment.
        huge = np.full(SIZE, 3e38, np.float32)
        with pytest.raises(errors.NonFiniteUpdate):
            await steps.step(session_id, huge)
        # Deleted by the group's task right after it answered the refusal.
        await until(lambda: chunk_keys_of(redis_client, session_id) == after_winner)
        await until(lambda: redis_client.zcard(batches_key(session_id)) == 0)
        _, params = await sessions.params(session_id, LOCAL)
        assert params is not None and np.array_equal(params, winner.params)
        await storage.close()

    asyncio.run(scenario())
