"""Storage v2: the gradient log, snapshots, rebuilding a state elsewhere, rollback, and
group commit — each against an independent sequence of ``adam_step`` calls."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest
import redis

from adamhub_service import errors
from adamhub_service.api.problems import status_of
from adamhub_service.config import Settings
from adamhub_service.model.principal import LOCAL
from adamhub_service.model.settings import SessionSettings
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import AdamConfig, AdamState, adam_step, init_state
from adamhub_service.sessions.service import (
    NewSession,
    SessionChanges,
    SessionLimits,
    SessionService,
)
from adamhub_service.steps.service import StepService
from adamhub_service.storage.connection import Storage, StorageOptions, connect
from adamhub_service.storage.session_repository import RedisSessionRepository

SIZE = 10


@dataclass
class Replica:
    """One process's view of the store: its cache, sessions and steps."""

    storage: Storage
    sessions: SessionService
    steps: StepService

    @property
    def store(self) -> RedisSessionRepository:
        return self.storage.sessions

    async def close(self) -> None:
        await self.storage.close()


def replica(redis_url: str, *, cache_bytes: int = 1 << 20, snapshot_bytes: int = 100) -> Replica:
    """A process on the test store; snapshots after every ~``snapshot_bytes`` logged."""
    storage = Storage.over(
        connect(redis_url, timeout_seconds=5, max_connections=8, cluster=Settings().redis_cluster),
        StorageOptions(
            pending_write_ttl_ms=60_000, cache_bytes=cache_bytes, snapshot_bytes=snapshot_bytes
        ),
    )
    store = storage.sessions
    sessions = SessionService(
        store,
        storage.tenants,
        storage.create_keys,
        storage.expiry,
        chunk_elements=4,
        limits=SessionLimits(max_size=1000, tenant_max_sessions=100, tenant_max_parameters=10**6),
        idempotency_ttl_seconds=60,
    )
    return Replica(storage, sessions, StepService(store, Metrics(), idempotency_ttl_seconds=60))


def assert_same_bits(ours: AdamState, expected: AdamState) -> None:
    assert ours.step == expected.step
    for name in ("params", "exp_avg", "exp_avg_sq"):
        got, want = getattr(ours, name), getattr(expected, name)
        assert got.tobytes() == want.tobytes(), name
    if expected.max_exp_avg_sq is not None:
        assert ours.max_exp_avg_sq is not None
        assert ours.max_exp_avg_sq.tobytes() == expected.max_exp_avg_sq.tobytes()


async def drained(store: RedisSessionRepository) -> None:
    """Wait for the snapshots a replica is writing."""
    await store.close()


def gradients(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=SIZE).astype(np.float32) for _ in range(count)]


def test_a_replica_without_the_state_rebuilds_the_same_bits(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Steps logged by one replica — some float16 on the wire, some after a change of
    the learning rate, across several snapshots — rebuild bit for bit in another."""

    async def scenario() -> None:
        first, second = replica(redis_url), replica(redis_url, cache_bytes=0)
        config = AdamConfig(amsgrad=True)
        params = np.linspace(-1, 1, SIZE, dtype=np.float32)
        spec = NewSession(dtype="float32", optimizer=config, params=params)
        record = (await first.sessions.create(spec, LOCAL)).record
        expected = init_state(params, config)
        for n, grad in enumerate(gradients(23)):
            if n == 9:
                config = config.evolve(lr=0.01)
                await first.sessions.update(
                    record.id, SessionChanges(optimizer={"lr": 0.01}), LOCAL
                )
            wire = grad.astype(np.float16) if n % 3 == 0 else grad
            exact = wire.astype(np.float32)
            result = await first.steps.step(
                record.id, exact, logged=wire if wire.dtype != exact.dtype else None
            )
            expected = adam_step(expected, exact, config)
            assert result.applied_t == n + 1
            assert result.params.tobytes() == expected.params.tobytes()
            if n in (4, 15):
                await drained(first.store)  # let snapshots land at some points, not others
            # The other replica, which never held the state, rebuilds it at every step.
            rebuilt = await second.store.load(record.id)
            assert_same_bits(rebuilt.state, expected)
            assert rebuilt.config == config
        # It steps on from there, and the first replica (now behind) follows.
        grad = np.full(SIZE, 0.5, np.float32)
        await second.steps.step(record.id, grad)
        expected = adam_step(expected, grad, config)
        await first.steps.step(record.id, grad)
        expected = adam_step(expected, grad, config)
        assert_same_bits((await second.store.load(record.id)).state, expected)
        assert_same_bits((await first.store.load(record.id)).state, expected)
        snapshots = redis_client.hgetall(f"adamhub:{{{record.id}}}:snaps")
        assert len(snapshots) == 1 and b"0" not in snapshots  # snapshots were taken
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_rollback_returns_to_every_kept_step_exactly(redis_url: str) -> None:
    async def scenario() -> None:
        one, other = replica(redis_url), replica(redis_url, cache_bytes=0)
        config = AdamConfig()
        params = np.arange(SIZE, dtype=np.float32)
        spec = NewSession(
            dtype="float32",
            optimizer=config,
            params=params,
            settings=SessionSettings(history_steps=12),
        )
        record = (await one.sessions.create(spec, LOCAL)).record
        states = [init_state(params, config)]
        for grad in gradients(30, seed=1):
            await one.steps.step(record.id, grad)
            states.append(adam_step(states[-1], grad, config))
        await drained(one.store)
        # Steps 18 to 30 are kept at least (history_steps 12); back one step at a time.
        for k in range(29, 17, -1):
            back = await one.sessions.rollback(record.id, k, LOCAL)
            assert back.t == k
            assert_same_bits((await other.store.load(record.id)).state, states[k])
            assert_same_bits((await one.store.load(record.id)).state, states[k])
        # Older than what is kept, or not reached: 409 history-unavailable, no change.
        with pytest.raises(errors.HistoryUnavailable) as caught:
            await one.sessions.rollback(record.id, 0, LOCAL)
        assert status_of(caught.value) == 409
        oldest = caught.value.extra["oldest_t"]
        assert 0 < oldest <= 18
        with pytest.raises(errors.HistoryUnavailable):
            await one.sessions.rollback(record.id, 19, LOCAL)
        assert (await one.store.record(record.id)).t == 18
        # Steps go on from step 18 as if 19 to 30 had never happened.
        grad = np.full(SIZE, -1.0, np.float32)
        result = await other.steps.step(record.id, grad)
        assert result.applied_t == 19
        assert_same_bits(
            (await one.store.load(record.id)).state, adam_step(states[18], grad, config)
        )
        await one.close()
        await other.close()

    asyncio.run(scenario())


def test_rollback_with_no_history_reaches_back_to_the_newest_snapshot(redis_url: str) -> None:
    async def scenario() -> None:
        one = replica(redis_url, snapshot_bytes=10**9)  # no snapshot after step 0
        config = AdamConfig()
        spec = NewSession(dtype="float32", optimizer=config, params=np.zeros(SIZE, np.float32))
        record = (await one.sessions.create(spec, LOCAL)).record
        for grad in gradients(3):
            await one.steps.step(record.id, grad)
        back = await one.sessions.rollback(record.id, 0, LOCAL)
        assert back.t == 0
        assert_same_bits(
            (await one.store.load(record.id)).state, init_state(np.zeros(SIZE, np.float32), config)
        )
        await one.close()

    asyncio.run(scenario())


def test_steps_queued_together_commit_together_in_order(redis_url: str) -> None:
    async def scenario() -> None:
        one = replica(redis_url, snapshot_bytes=10**9)
        config = AdamConfig()
        spec = NewSession(dtype="float32", optimizer=config, params=np.zeros(SIZE, np.float32))
        record = (await one.sessions.create(spec, LOCAL)).record
        grads = gradients(40, seed=2)
        keys = [f"key-{n}" if n % 2 else None for n in range(40)]
        results = await asyncio.gather(
            *(
                one.steps.step(record.id, grad, idempotency_key=key)
                for grad, key in zip(grads, keys, strict=True)
            )
        )
        assert [r.applied_t for r in results] == list(range(1, 41))
        expected = init_state(np.zeros(SIZE, np.float32), config)
        for grad, result in zip(grads, results, strict=True):
            expected = adam_step(expected, grad, config)
            assert result.params.tobytes() == expected.params.tobytes()
        stored = await one.store.record(record.id)
        assert stored.t == 40
        assert stored.rev == record.rev + 1  # one commit for the forty
        # A retry of a keyed step of the group is answered from its record.
        again = await one.steps.step(record.id, grads[3], idempotency_key="key-3")
        assert again.replayed and again.applied_t == 4
        fresh = replica(redis_url, cache_bytes=0)
        assert_same_bits((await fresh.store.load(record.id)).state, expected)
        await one.close()
        await fresh.close()

    asyncio.run(scenario())


def test_a_bad_step_in_a_group_is_refused_alone(redis_url: str) -> None:
    async def scenario() -> None:
        one = replica(redis_url)
        config = AdamConfig()
        spec = NewSession(dtype="float32", optimizer=config, params=np.zeros(SIZE, np.float32))
        record = (await one.sessions.create(spec, LOCAL)).record
        huge = np.full(SIZE, 3e38, np.float32)  # g² overflows v
        fine = np.ones(SIZE, np.float32)
        results = await asyncio.gather(
            one.steps.step(record.id, fine),
            one.steps.step(record.id, huge),
            one.steps.step(record.id, fine),
            return_exceptions=True,
        )
        assert isinstance(results[1], errors.NonFiniteUpdate)
        assert [r.applied_t for r in (results[0], results[2])] == [1, 2]  # type: ignore[union-attr]
        await one.close()

    asyncio.run(scenario())


def test_a_base_step_is_judged_against_the_session_not_a_stale_cache(redis_url: str) -> None:
    """A worker's base step comes from another replica's answer; this replica's cache
    is behind it, and must not call the gradient stale."""

    async def scenario() -> None:
        behind, ahead = replica(redis_url), replica(redis_url)
        spec = NewSession(
            dtype="float32", optimizer=AdamConfig(), params=np.zeros(SIZE, np.float32)
        )
        record = (await behind.sessions.create(spec, LOCAL)).record
        await behind.store.load(record.id)  # cached at t = 0
        answered = await ahead.steps.step(record.id, np.ones(SIZE, np.float32), base_step=0)
        assert answered.applied_t == 1
        result = await behind.steps.step(record.id, np.ones(SIZE, np.float32), base_step=1)
        assert result.applied_t == 2
        with pytest.raises(errors.StaleGradient):
            await behind.steps.step(record.id, np.ones(SIZE, np.float32), base_step=9)
        await behind.close()
        await ahead.close()

    asyncio.run(scenario())
