"""API keys as the SDK shows them: ``client.keys.create/list/get/revoke``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict, Unpack

import httpx

from adamhub._base_client import RequestSpec
from adamhub._calls import Call, one, run_async, run_sync
from adamhub._session import AsyncRequester, Requester


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key; ``key`` (the secret) is set only on the answer that made it."""

    id: str
    tenant: str
    actions: tuple[str, ...]
    sessions: tuple[str, ...]
    expires_at: str | None
    description: str | None
    created_at: str
    key: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ApiKey:
        """From the API's JSON object."""
        return cls(
            id=values["id"],
            tenant=values["tenant"],
            actions=tuple(values["actions"]),
            sessions=tuple(values["sessions"]),
            expires_at=values.get("expires_at"),
            description=values.get("description"),
            created_at=values["created_at"],
            key=values.get("key"),
        )


class NewKey(TypedDict, total=False):
    """A key to make: its ``tenant`` (default the caller's), the ``actions`` it grants
    and the ``sessions`` it may touch (default every one), when it ``expires_at`` and a
    ``description``."""

    tenant: str | None
    actions: list[str] | None
    sessions: list[str] | None
    expires_at: datetime | str | None
    description: str | None


def _create_call(key: NewKey) -> Call[ApiKey]:
    body = {name: value for name, value in key.items() if value is not None}
    if isinstance(expires := body.get("expires_at"), datetime):
        body["expires_at"] = expires.isoformat()
    # A retry could make a second key: send it again only when it surely was not made.
    response = yield RequestSpec("POST", "/v1/keys", json=body, retry="unsent")
    return ApiKey.from_dict(response.json())


def _list_call() -> Call[list[ApiKey]]:
    answer = (yield RequestSpec("GET", "/v1/keys")).json()
    return [ApiKey.from_dict(values) for values in answer["keys"]]


def _get_call(key_id: str) -> Call[ApiKey]:
    return ApiKey.from_dict((yield RequestSpec("GET", f"/v1/keys/{key_id}")).json())


def _revoke_call(key_id: str) -> Call[httpx.Response]:
    return one(RequestSpec("DELETE", f"/v1/keys/{key_id}"))


class Keys:
    """The API keys of a ``Client`` (needs the master key or ``keys.manage``)."""

    def __init__(self, client: Requester) -> None:
        self._client = client

    def create(self, **key: Unpack[NewKey]) -> ApiKey:
        """Make a key (default: every action on every session of the tenant); its secret
        is in ``.key``, shown this once."""
        return run_sync(self._client.request, _create_call(key))

    def list(self) -> list[ApiKey]:
        """The keys the caller manages (without secrets)."""
        return run_sync(self._client.request, _list_call())

    def get(self, key_id: str) -> ApiKey:
        """One key (without its secret)."""
        return run_sync(self._client.request, _get_call(key_id))

    def revoke(self, key_id: str) -> None:
        """Revoke a key: the service refuses it everywhere within a second."""
        run_sync(self._client.request, _revoke_call(key_id))


class AsyncKeys:
    """The API keys of an ``AsyncClient``: ``Keys``'s methods, as coroutines."""

    def __init__(self, client: AsyncRequester) -> None:
        self._client = client

    async def create(self, **key: Unpack[NewKey]) -> ApiKey:
        """Make a key (see ``Keys.create``)."""
        return await run_async(self._client.request, _create_call(key))

    async def list(self) -> list[ApiKey]:
        """The keys the caller manages (without secrets)."""
        return await run_async(self._client.request, _list_call())

    async def get(self, key_id: str) -> ApiKey:
        """One key (without its secret)."""
        return await run_async(self._client.request, _get_call(key_id))

    async def revoke(self, key_id: str) -> None:
        """Revoke a key: the service refuses it everywhere within a second."""
        await run_async(self._client.request, _revoke_call(key_id))
