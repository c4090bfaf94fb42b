"""API keys as the SDK shows them: ``client.keys.create/list/get/revoke``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adamhub._base_client import RequestSpec
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


def _create_spec(
    tenant: str | None,
    actions: list[str] | None,
    sessions: list[str] | None,
    expires_at: datetime | str | None,
    description: str | None,
) -> RequestSpec:
    body: dict[str, Any] = {}
    if tenant is not None:
        body["tenant"] = tenant
    if actions is not None:
        body["actions"] = list(actions)
    if sessions is not None:
        body["sessions"] = list(sessions)
    if expires_at is not None:
        body["expires_at"] = (
            expires_at.isoformat() if isinstance(expires_at, datetime) else expires_at
        )
    if description is not None:
        body["description"] = description
    # A retry could make a second key: send it again only when it surely was not made.
    return RequestSpec("POST", "/v1/keys", json=body, retry="unsent")


class Keys:
    """The API keys of a ``Client`` (needs the master key or ``keys.manage``)."""

    def __init__(self, client: Requester) -> None:
        self._client = client

    def create(
        self,
        *,
        tenant: str | None = None,
        actions: list[str] | None = None,
        sessions: list[str] | None = None,
        expires_at: datetime | str | None = None,
        description: str | None = None,
    ) -> ApiKey:
        """Make a key (default: every action on every session of the tenant); its secret
        is in ``.key``, shown this once."""
        spec = _create_spec(tenant, actions, sessions, expires_at, description)
        return ApiKey.from_dict(self._client.request(spec).json())

    def list(self) -> list[ApiKey]:
        """The keys the caller manages (without secrets)."""
        answer = self._client.request(RequestSpec("GET", "/v1/keys")).json()
        return [ApiKey.from_dict(values) for values in answer["keys"]]

    def get(self, key_id: str) -> ApiKey:
        """One key (without its secret)."""
        return ApiKey.from_dict(
            self._client.request(RequestSpec("GET", f"/v1/keys/{key_id}")).json()
        )

    def revoke(self, key_id: str) -> None:
        """Revoke a key: the service refuses it everywhere within a second."""
        self._client.request(RequestSpec("DELETE", f"/v1/keys/{key_id}"))


class AsyncKeys:
    """The API keys of an ``AsyncClient``: ``Keys``'s methods, as coroutines."""

    def __init__(self, client: AsyncRequester) -> None:
        self._client = client

    async def create(
        self,
        *,
        tenant: str | None = None,
        actions: list[str] | None = None,
        sessions: list[str] | None = None,
        expires_at: datetime | str | None = None,
        description: str | None = None,
    ) -> ApiKey:
        """Make a key (see ``Keys.create``)."""
        spec = _create_spec(tenant, actions, sessions, expires_at, description)
        return ApiKey.from_dict((await self._client.request(spec)).json())

    async def list(self) -> list[ApiKey]:
        """The keys the caller manages (without secrets)."""
        answer = (await self._client.request(RequestSpec("GET", "/v1/keys"))).json()
        return [ApiKey.from_dict(values) for values in answer["keys"]]

    async def get(self, key_id: str) -> ApiKey:
        """One key (without its secret)."""
        answer = await self._client.request(RequestSpec("GET", f"/v1/keys/{key_id}"))
        return ApiKey.from_dict(answer.json())

    async def revoke(self, key_id: str) -> None:
        """Revoke a key: the service refuses it everywhere within a second."""
        await self._client.request(RequestSpec("DELETE", f"/v1/keys/{key_id}"))
