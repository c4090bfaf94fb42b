"""Where a key lives: one Redis, or the primary of its slot in a Redis Cluster."""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster


def is_cluster(client: redis.Redis) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


def primary_of(client: redis.Redis, key: str) -> ClusterNode | None:
    """The cluster node that serves ``key``'s slot as the client knows it now; None for
    one Redis."""
    cluster: Any = client
    if not is_cluster(client):
        return None
    node: ClusterNode = cluster.get_node_from_key(key)
    return node
