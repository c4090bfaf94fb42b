"""One deployment's storage: a connection pool to its Redis and the stores over it,
each with one concern. The app and the tools build them here; the domain sees each
through its protocol (``model/repositories.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from adamhub_service.model.stored import StoreStatus
from adamhub_service.observability.metrics import Metrics
from adamhub_service.storage.acks import NO_ACKS, ReplicaAcks
from adamhub_service.storage.api_keys import RedisApiKeyRepository
from adamhub_service.storage.cache import StateCache
from adamhub_service.storage.chunks import VectorChunks
from adamhub_service.storage.create_keys import RedisCreateKeyRepository
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.expiry import RedisExpiryRepository
from adamhub_service.storage.garbage import ChunkGarbage
from adamhub_service.storage.notifier import StepNotifier
from adamhub_service.storage.pools import WaitingConnectionPool, WaitingRedisCluster
from adamhub_service.storage.rate_limits import RedisRateRepository
from adamhub_service.storage.round_store import RedisRoundRepository
from adamhub_service.storage.screening import RedisScreenRepository
from adamhub_service.storage.session_repository import RedisSessionRepository
from adamhub_service.storage.session_scripts import SessionScripts
from adamhub_service.storage.tenants import RedisTenantRepository
from adamhub_service.storage.topology import is_cluster


def connect(
    url: str, *, timeout_seconds: float, max_connections: int = 100, cluster: bool = False
) -> redis.Redis:
    """A connection pool to the Redis at ``url`` (bytes in, bytes out); with ``cluster``,
    a client of the Redis Cluster that ``url`` is a node of, which finds the others and
    sends each command to the primary of its keys' slot.

    A command that finds all ``max_connections`` (per node, on a cluster) busy waits for
    one, up to ``timeout_seconds`` (``storage/pools.py``).

    The cluster client is typed as the plain one: every command the stores send has the
    same signature on both, and each script and transaction touches one slot.
    """
    common: dict[str, Any] = {
        "decode_responses": False,
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "max_connections": max_connections,
    }
    if cluster:
        cluster_client = cast(WaitingRedisCluster, WaitingRedisCluster.from_url(url, **common))
        cluster_client.wait_seconds = timeout_seconds
        return cast(redis.Redis, cluster_client)
    pool = WaitingConnectionPool.from_url(url, health_check_interval=30, **common)
    pool.wait_seconds = timeout_seconds
    return redis.Redis.from_pool(pool)


@dataclass(frozen=True, slots=True)
class StorageOptions:
    """How the stores use Redis (the app's settings of the same names)."""

    pending_write_ttl_ms: int = 600_000
    round_trip_bytes: int = 64 << 20
    cache_bytes: int = 1 << 30
    commit_attempts: int = 32
    snapshot_bytes: int | None = None
    acks: ReplicaAcks = NO_ACKS


@dataclass(frozen=True, slots=True)
class Storage:
    """The stores of one deployment, over one connection pool."""

    client: redis.Redis
    sessions: RedisSessionRepository
    rounds: RedisRoundRepository
    tenants: RedisTenantRepository
    create_keys: RedisCreateKeyRepository
    expiry: RedisExpiryRepository
    rates: RedisRateRepository
    api_keys: RedisApiKeyRepository
    screening: RedisScreenRepository
    chunk_garbage: ChunkGarbage
    acks: ReplicaAcks = NO_ACKS

    @classmethod
    def over(
        cls, client: redis.Redis, options: StorageOptions, metrics: Metrics | None = None
    ) -> Storage:
        """The stores over ``client``."""
        chunks = VectorChunks(
            client,
            pending_write_ttl_ms=options.pending_write_ttl_ms,
            round_trip_bytes=options.round_trip_bytes,
            metrics=metrics,
            acks=options.acks,
        )
        sessions = RedisSessionRepository(
            SessionScripts(client, chunks),
            StateCache(options.cache_bytes),
            StepNotifier(client),
            commit_attempts=options.commit_attempts,
            snapshot_bytes=options.snapshot_bytes,
            metrics=metrics,
        )
        return cls(
            client,
            sessions,
            RedisRoundRepository(client, chunks),
            RedisTenantRepository(client),
            RedisCreateKeyRepository(client),
            RedisExpiryRepository(client),
            RedisRateRepository(client),
            RedisApiKeyRepository(client),
            RedisScreenRepository(client),
            chunks.garbage,
            options.acks,
        )

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""
        async with unavailable_on_error():
            await self.client.ping()

    async def status(self) -> StoreStatus:
        """How the store is deployed, as it answers now (``StoreUnavailable`` when it
        does not): its mode, primaries, the replicas of its primary, and how many of them
        confirm each write."""
        if is_cluster(self.client):
            return await self._cluster_status()
        async with unavailable_on_error():
            replication = await self.client.info("replication")
        return StoreStatus(
            mode="standalone",
            primaries=1,
            replicas=int(replication.get("connected_slaves", 0)),
            replica_acks=self.acks.replicas,
        )

    async def _cluster_status(self) -> StoreStatus:
        cluster = cast(RedisCluster, self.client)
        async with unavailable_on_error():
            # Each primary's own view: a primary that does not answer is not counted.
            replies = await cluster.info("replication", target_nodes=RedisCluster.PRIMARIES)
        answering = [reply for reply in replies.values() if isinstance(reply, dict)]
        return StoreStatus(
            mode="cluster",
            primaries=len(answering),
            replicas=sum(int(reply.get("connected_slaves", 0)) for reply in answering),
            replica_acks=self.acks.replicas,
        )

    async def close(self) -> None:
        """Finish the snapshots being written, then close every connection."""
        await self.sessions.close()
        await self.client.aclose()
