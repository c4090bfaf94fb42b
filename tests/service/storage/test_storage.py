"""What the service leaves in Redis: one snapshot and a bounded log per session,
orphans cleaned or expiring."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from adamhub_service import errors
from adamhub_service.api.problems import status_of
from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.model.log import LogEntry
from adamhub_service.model.outcomes import WriteStatus
from adamhub_service.model.principal import LOCAL
from adamhub_service.model.records import new_write_id
from adamhub_service.model.stored import CachedSession, LoggedStep, StoredSession
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import AdamConfig
from adamhub_service.sessions.service import NewSession, SessionLimits, SessionService
from adamhub_service.steps.service import StepService
from adamhub_service.storage.chunks import VectorChunks
from adamhub_service.storage.connection import Storage, StorageOptions, connect
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.pools import WaitingConnectionPool, WaitingRedisCluster
from adamhub_service.storage.session_repository import RedisSessionRepository
from adamhub_service.storage.session_scripts import SessionScripts
from adamhub_service.testing import LOOPBACK, free_port

BINARY = "application/octet-stream"


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, chunk_elements=1000)
    with TestClient(create_app(settings), client=LOOPBACK) as test_client:
        yield test_client


@pytest.mark.standalone_only
def test_redis_holds_a_bounded_log_and_one_snapshot_over_1000_steps(
    client: TestClient, redis_client: redis.Redis
) -> None:
    size = 10_000  # 10 chunks of 1000 elements per vector
    sid = client.post("/v1/sessions", json={"size": size, "optimizer": {"amsgrad": True}}).json()[
        "id"
    ]
    rng = np.random.default_rng(0)
    gradient = rng.normal(size=size).astype(np.float32)
    baseline = int(redis_client.info("memory")["used_memory"])
    written_before = int(redis_client.info("stats")["total_net_input_bytes"])
    for i in range(1000):
        headers = {"Content-Type": BINARY} | ({"Idempotency-Key": f"k{i}"} if i < 5 else {})
        response = client.post(
            f"/v1/sessions/{sid}/step?return=none",
            content=(gradient * (1 + i % 7)).tobytes(),
            headers=headers,
        )
        assert response.status_code == 200
    written = int(redis_client.info("stats")["total_net_input_bytes"]) - written_before
    time.sleep(0.5)  # a snapshot may still be being written
    keys = [key for key in redis_client.keys("*") if isinstance(key, bytes)]
    chunks = [k for k in keys if b":c:" in k]
    assert all(redis_client.ttl(k) == -1 for k in chunks)  # committed chunks do not expire
    log = redis_client.hgetall(f"adamhub:{{{sid}}}:log")
    snapshots = redis_client.hgetall(f"adamhub:{{{sid}}}:snaps")
    assert len(snapshots) == 1  # history_steps 0: only the newest is kept
    # A snapshot after every 8 gradients' bytes (8 × one vector): at most 8 entries,
    # each 10 chunks, and the snapshot's 4 vectors of 10 chunks.
    assert len(log) <= 8
    assert len(chunks) == 4 * 10 + 10 * len(log)
    idem = [k for k in keys if b":idem:" in k]
    assert redis_client.zcard(f"adamhub:{{{sid}}}:idems") == 5
    assert len(idem) == 5
    assert all(redis_client.ttl(k) > 0 for k in idem)
    # meta, snapshots, the log (unless empty), chunks, idempotency records and their
    # index, the tenant index and sizes, and the history (a point per step, 1000 kept)
    assert redis_client.zcard(f"adamhub:{{{sid}}}:hist") == 1000
    assert len(keys) == 2 + bool(log) + len(chunks) + 5 + 1 + 2 + 1
    # 1000 gradients are 40 MB; kept, or θ, m, v, max v written per step, 160 MB.
    grown = int(redis_client.info("memory")["used_memory"]) - baseline
    assert grown < 2_000_000, f"memory grew by {grown} bytes over 1000 steps"
    # Each step wrote its gradient and a share of snapshots (AMSGrad's 4 vectors every 8
    # gradients: 0.5), not its state (4×).
    assert written / (1000 * size * 4) < 1.6


def open_sessions(
    redis_url: str, *, cache_bytes: int = 0, commit_attempts: int = 32
) -> tuple[Storage, RedisSessionRepository, SessionService, StepService]:
    """A process's view of the sessions in the test Redis: storage, its session
    repository, sessions, steps."""
    storage = Storage.over(
        connect(redis_url, timeout_seconds=5, max_connections=4, cluster=Settings().redis_cluster),
        StorageOptions(
            pending_write_ttl_ms=60_000, cache_bytes=cache_bytes, commit_attempts=commit_attempts
        ),
    )
    store = storage.sessions
    sessions = SessionService(
        store,
        storage.tenants,
        storage.create_keys,
        storage.expiry,
        chunk_elements=3,
        limits=SessionLimits(max_size=1000, tenant_max_sessions=100, tenant_max_parameters=10**6),
        idempotency_ttl_seconds=60,
    )
    steps = StepService(store, Metrics(), idempotency_ttl_seconds=60)
    return storage, store, sessions, steps


def new_session(params: np.ndarray) -> NewSession:
    return NewSession(dtype=str(params.dtype), optimizer=AdamConfig(), params=params)


def logged_step(gradient: np.ndarray) -> LoggedStep:
    return LoggedStep(LogEntry(new_write_id(), str(gradient.dtype), gradient.nbytes), gradient)


def test_append_refuses_a_stale_rev_and_leaves_no_orphans(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        redis_store, store, sessions, _ = open_sessions(redis_url)
        record = (await sessions.create(new_session(np.ones(7, np.float32)), LOCAL)).record
        client = redis_client
        keys_before = sorted(client.keys("*"))

        # A writer that read rev 1 but lost the race to another writer.
        loaded = await store.load(record.id)
        *_, other_steps = open_sessions(redis_url)
        await other_steps.step(record.id, np.ones(7, np.float32))
        step = logged_step(np.ones(7, np.float32))
        stale = loaded.record.evolve(t=1, head=step.entry.write_id)
        outcome = await store.append(
            loaded, stale, [step], CachedSession(stale, loaded.state, loaded.config),
            idempotency_ttl_ms=1000,
        )  # fmt: skip
        assert outcome.status is WriteStatus.CONFLICT
        assert outcome.rev is None and outcome.replay is None
        assert client.keys(f"*:c:{step.entry.write_id}:*") == []  # the loser deleted its chunks
        # The winner added its log entry (3 chunks), the log itself and the history.
        assert len(client.keys("*")) == len(keys_before) + 3 + 1 + 1
        assert int(client.hget(f"adamhub:{{{record.id}}}:meta", "t") or 0) == 1
        await redis_store.close()

    asyncio.run(scenario())


def test_append_on_a_deleted_session_is_gone_and_leaves_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        redis_store, store, sessions, steps = open_sessions(redis_url)
        record = (await sessions.create(new_session(np.ones(7, np.float32)), LOCAL)).record
        await steps.step(record.id, np.ones(7, np.float32))
        loaded = await store.load(record.id)
        await sessions.delete(record.id, LOCAL)
        step = logged_step(np.ones(7, np.float32))
        new = loaded.record.evolve(t=2, head=step.entry.write_id)
        outcome = await store.append(
            loaded, new, [step], CachedSession(new, loaded.state, loaded.config),
            idempotency_ttl_ms=1000,
        )  # fmt: skip
        assert outcome.status is WriteStatus.GONE
        client = redis_client
        assert client.keys("*") == []
        await redis_store.close()

    asyncio.run(scenario())


def test_store_down_is_503_with_retry_after() -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_seconds=1)
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOOPBACK) as client:
        for method, path, body in [
            ("GET", "/readyz", None),
            ("POST", "/v1/sessions", {"size": 3}),
            ("GET", "/v1/sessions", None),
            ("GET", f"/v1/sessions/s_{'0' * 32}/params", None),
            ("POST", f"/v1/sessions/s_{'0' * 32}/step", {"gradient": [1.0]}),
        ]:
            response = client.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == "1"
            problem = response.json()
            assert problem["type"] == "https://adamhub.dev/errors/store-unavailable"
            assert "Traceback" not in response.text
        assert client.get("/healthz").status_code == 200


def test_losing_every_compare_and_set_is_409_with_retry_after(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        redis_store, store, mine, my_steps = open_sessions(
            redis_url, cache_bytes=1 << 20, commit_attempts=1
        )
        record = (await mine.create(new_session(np.ones(7, np.float32)), LOCAL)).record
        # Another process steps the session; this one still caches the old version.
        *_, other_steps = open_sessions(redis_url)
        await other_steps.step(record.id, np.ones(7, np.float32))
        with pytest.raises(errors.StepConflict) as caught:
            await my_steps.step(record.id, np.full(7, 2.0, np.float32))
        assert status_of(caught.value) == 409
        assert caught.value.retry_after == 1
        current = await store.record(record.id)
        assert current.t == 1  # the refused step changed nothing
        client = redis_client
        # the snapshot (3 vectors × 3 chunks) and the other's step (3): no chunk of its own
        assert len(client.keys("*:c:*")) == 9 + 3
        # With the cache refreshed by the failure, the next attempt succeeds.
        result = await my_steps.step(record.id, np.full(7, 2.0, np.float32))
        assert result.applied_t == 2
        await redis_store.close()

    asyncio.run(scenario())


def test_the_index_of_idempotency_records_forgets_expired_ones(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Long enough that the five records outlive five steps on a loaded machine.
    settings = Settings(redis_url=redis_url, idempotency_ttl_seconds=1.0)
    with TestClient(create_app(settings), client=LOOPBACK) as client:
        sid = client.post("/v1/sessions", json={"size": 2}).json()["id"]
        for i in range(5):
            step = client.post(
                f"/v1/sessions/{sid}/step",
                json={"gradient": [1, 1]},
                headers={"Idempotency-Key": f"old-{i}"},
            )
            assert step.status_code == 200
        assert redis_client.zcard(f"adamhub:{{{sid}}}:idems") == 5
        time.sleep(1.1)
        client.post(
            f"/v1/sessions/{sid}/step",
            json={"gradient": [1, 1]},
            headers={"Idempotency-Key": "new"},
        )
        index = redis_client.zrange(f"adamhub:{{{sid}}}:idems", 0, -1)
        assert index == [f"adamhub:{{{sid}}}:idem:new".encode()]
        assert redis_client.pttl(f"adamhub:{{{sid}}}:idems") > 0  # it expires with its records


def test_a_process_behind_catches_up_from_the_log_after_its_state_bit_for_bit(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        rng = np.random.default_rng(11)
        writer_storage, writer, sessions, writer_steps = open_sessions(
            redis_url, cache_bytes=1 << 20
        )
        reader_storage, reader, *_ = open_sessions(redis_url, cache_bytes=1 << 20)
        record = (await sessions.create(new_session(rng.normal(size=7)), LOCAL)).record
        for _ in range(3):
            await writer_steps.step(record.id, rng.normal(size=7))
        behind = await reader.state(record.id)  # the reader holds t=3
        assert behind.state.step == 3
        for _ in range(4):
            await writer_steps.step(record.id, rng.normal(size=7))
        # Only the log after its state is read: no snapshot, the four new steps.
        scripts = SessionScripts(reader_storage.client, VectorChunks(
            reader_storage.client, pending_write_ttl_ms=60_000
        ))  # fmt: skip
        tail = await scripts.load(record.id, since=(3, behind.record.head))
        assert isinstance(tail, StoredSession)
        assert tail.snapshot == {} and tail.snapshot_t == 3 and len(tail.log) == 4
        caught_up = await reader.state(record.id)
        ahead = await writer.state(record.id)
        assert caught_up.state.step == ahead.state.step == 7
        for name in ("params", "exp_avg", "exp_avg_sq"):
            assert getattr(caught_up.state, name).tobytes() == getattr(ahead.state, name).tobytes()
        assert caught_up.config == ahead.config
        # Another history since (a rollback, then other steps): rebuilt from the snapshot.
        stale = await scripts.load(record.id, since=(3, "not-its-head"))
        assert isinstance(stale, StoredSession) and stale.snapshot != {}
        await writer_storage.close()
        await reader_storage.close()

    asyncio.run(scenario())


def test_a_command_past_the_pools_connections_waits_for_one_then_gives_up(
    redis_url: str, store_mode: dict[str, object]
) -> None:
    """One connection (to the key's node, on a cluster), held: a second command waits
    for it and runs once it is back; one that waits past the store timeout fails as
    never sent (store-unavailable) and changes nothing."""
    cluster = store_mode["mode"] == "cluster"

    async def scenario() -> None:
        client = connect(redis_url, timeout_seconds=0.3, max_connections=1, cluster=cluster)
        if cluster:
            await client.ping()  # learns the topology
            node = cast(WaitingRedisCluster, client).get_node_from_key("k")
            assert node is not None

            async def hold() -> Any:
                return node.acquire_connection()

            async def give_back(connection: Any) -> None:
                node.release(connection)
        else:
            pool = cast(WaitingConnectionPool, client.connection_pool)
            hold, give_back = pool.get_connection, pool.release

        held = await hold()
        waiting = asyncio.ensure_future(client.set("k", b"1"))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await give_back(held)
        assert await waiting is True

        held = await hold()
        began = time.monotonic()
        with pytest.raises(errors.StoreUnavailable):
            async with unavailable_on_error(write=True):
                await client.set("k", b"2")
        assert 0.25 < time.monotonic() - began < 2
        await give_back(held)
        assert await client.get("k") == b"1"
        await client.aclose()

    asyncio.run(scenario())
