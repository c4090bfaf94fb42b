"""API keys: made from the master key (or a key with ``keys.manage``), checked on every
request, revoked everywhere within a second.

Only the SHA-256 of a secret is stored. A process remembers a checked key for
``CACHE_SECONDS``, so a revoked or expired key stops working on every replica within
that time, without a message that could be missed.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from adamhub_service import errors
from adamhub_service.model.api_keys import ApiKey, new_key_id, new_secret, secret_hash
from adamhub_service.model.principal import ACTIONS, ALL, MASTER, TENANT_PATTERN, Principal
from adamhub_service.model.records import rfc3339, utc_now
from adamhub_service.model.repositories import ApiKeyRepository

CACHE_SECONDS = 0.5
_CACHE_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class NewKey:
    """A request for a key."""

    tenant: str
    actions: tuple[str, ...] = (ALL,)
    sessions: tuple[str, ...] = (ALL,)
    expires_at: datetime | None = None
    description: str | None = None


def check_new_key(spec: NewKey) -> None:
    """Refuse a key request that names unknown actions or an invalid tenant."""
    unknown = sorted(set(spec.actions) - {ALL, *ACTIONS})
    if unknown:
        raise errors.ValidationFailed(
            f"unknown actions {unknown}; use {', '.join([ALL, *ACTIONS])}",
            errors=[{"loc": ["actions"], "msg": f"unknown {unknown}"}],
        )
    if not TENANT_PATTERN.fullmatch(spec.tenant):
        raise errors.ValidationFailed(
            "a tenant is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            errors=[{"loc": ["tenant"], "msg": "invalid tenant"}],
        )


class KeyService:
    """The keys of a deployment, and who a request's key says it is."""

    def __init__(self, store: ApiKeyRepository, *, master_key: str | None) -> None:
        self._store = store
        self._master_key = master_key
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def authenticate(self, secret: str) -> Principal:
        """The caller a bearer secret makes; 401 for an unknown, expired or revoked key."""
        if self._master_key is not None and hmac.compare_digest(
            secret.encode(), self._master_key.encode()
        ):
            return MASTER
        key = await self._lookup(secret_hash(secret))
        if key is None or key.expired(datetime.now(UTC)):
            raise errors.Unauthorized("the API key is unknown, expired or revoked")
        return key.principal()

    async def create(self, spec: NewKey, principal: Principal) -> tuple[ApiKey, str]:
        """A new key and its secret (the only time the secret is seen)."""
        principal.require("keys.manage")
        check_new_key(spec)
        if principal is not MASTER and spec.tenant != principal.tenant:
            raise errors.Forbidden(
                f"this key manages tenant {principal.tenant!r}, not {spec.tenant!r}",
                action="keys.manage",
            )
        expires_at = None
        if spec.expires_at is not None:
            expires_at = rfc3339(spec.expires_at)
        key = ApiKey(
            id=new_key_id(),
            tenant=spec.tenant,
            actions=tuple(dict.fromkeys(spec.actions)),
            sessions=tuple(dict.fromkeys(spec.sessions)),
            expires_at=expires_at,
            description=spec.description,
            created_at=utc_now(),
        )
        secret = new_secret()
        await self._store.save(key, secret_hash(secret))
        return key, secret

    async def list(self, principal: Principal) -> list[ApiKey]:
        """The keys the caller manages: every tenant's for the master key, else its own."""
        principal.require("keys.manage")
        return [key for key in await self._store.all() if self._manages(principal, key)]

    async def get(self, key_id: str, principal: Principal) -> ApiKey:
        """One key the caller manages (404 otherwise)."""
        principal.require("keys.manage")
        key = await self._store.by_id(key_id)
        if key is None or not self._manages(principal, key):
            raise errors.KeyNotFound(key_id)
        return key

    async def revoke(self, key_id: str, principal: Principal) -> None:
        """Delete a key: every replica refuses it within ``CACHE_SECONDS``."""
        await self.get(key_id, principal)
        if not await self._store.delete(key_id):
            raise errors.KeyNotFound(key_id)

    @staticmethod
    def _manages(principal: Principal, key: ApiKey) -> bool:
        return principal is MASTER or key.tenant == principal.tenant

    async def _lookup(self, hashed: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(hashed)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        key = await self._store.by_secret_hash(hashed)
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()  # bounded: unknown secrets must not grow it forever
        self._cache[hashed] = (now, key)
        return key
