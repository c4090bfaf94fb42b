"""API keys in Redis: each grant under the hash of its secret, an index by id."""

from __future__ import annotations

from typing import Any, cast

import orjson
import redis.asyncio as redis

from adamhub_service.model.api_keys import ApiKey
from adamhub_service.storage.encoding import text
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keyspace import API_KEYS_INDEX, api_key_id_key, api_key_key


def _to_hash(key: ApiKey) -> dict[Any, Any]:
    return {
        "id": key.id,
        "tenant": key.tenant,
        "actions": orjson.dumps(key.actions).decode(),
        "sessions": orjson.dumps(key.sessions).decode(),
        "expires_at": key.expires_at or "",
        "description": orjson.dumps(key.description).decode(),
        "created_at": key.created_at,
    }


def _from_hash(raw: dict[Any, Any]) -> ApiKey:
    doc = {text(name): text(value) for name, value in raw.items()}
    return ApiKey(
        id=doc["id"],
        tenant=doc["tenant"],
        actions=tuple(orjson.loads(doc["actions"])),
        sessions=tuple(orjson.loads(doc["sessions"])),
        expires_at=doc["expires_at"] or None,
        description=orjson.loads(doc["description"]),
        created_at=doc["created_at"],
    )


class RedisApiKeyRepository:
    """The API keys of a deployment."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    async def save(self, key: ApiKey, secret_hash: str) -> None:
        """Store a new key, all at once."""
        async with unavailable_on_error(write=True), self._redis.pipeline() as pipe:
            pipe.hset(api_key_key(secret_hash), mapping=_to_hash(key))
            pipe.set(api_key_id_key(key.id), secret_hash)
            pipe.zadd(API_KEYS_INDEX, {key.id: 0})
            await pipe.execute()

    async def by_secret_hash(self, secret_hash: str) -> ApiKey | None:
        """The key whose secret has this hash, if it exists."""
        async with unavailable_on_error():
            raw = await self._redis.hgetall(api_key_key(secret_hash))
        return _from_hash(raw) if raw else None

    async def by_id(self, key_id: str) -> ApiKey | None:
        """The key with this id, if it exists."""
        async with unavailable_on_error():
            found = await self._redis.get(api_key_id_key(key_id))
        return None if found is None else await self.by_secret_hash(text(found))

    async def all(self) -> list[ApiKey]:
        """Every key, oldest first."""
        async with unavailable_on_error():
            ids = cast(list[bytes], await self._redis.zrange(API_KEYS_INDEX, 0, -1))
            async with self._redis.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.get(api_key_id_key(key_id.decode()))
                hashes = await pipe.execute()
            async with self._redis.pipeline(transaction=False) as pipe:
                for found in hashes:
                    pipe.hgetall(api_key_key(found.decode() if isinstance(found, bytes) else ""))
                raws = await pipe.execute()
        return [_from_hash(raw) for raw in raws if raw]

    async def delete(self, key_id: str) -> bool:
        """Delete a key everywhere at once; False when there was none."""
        async with unavailable_on_error(write=True):
            found = await self._redis.get(api_key_id_key(key_id))
            if found is None:
                return False
            async with self._redis.pipeline() as pipe:
                # Both keys are in one slot ({keys}); a cluster's pipe.unlink would split
                # them by slot outside the transaction.
                pipe.execute_command("UNLINK", api_key_key(text(found)), api_key_id_key(key_id))
                pipe.zrem(API_KEYS_INDEX, key_id)
                await pipe.execute()
        return True
