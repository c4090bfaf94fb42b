"""Who is calling: the bearer key, or protected mode without a master key."""

from __future__ import annotations

import functools
import ipaddress
from typing import Annotated

from fastapi import Depends, Request

from adamhub_service import errors
from adamhub_service.api.deps import ServicesDep
from adamhub_service.model.principal import LOCAL, Principal

PROTECTED_MODE_HELP = (
    "this service has no master key, so it serves clients on this machine only "
    "(protected mode). To serve others, start it with ADAMHUB_MASTER_KEY (or "
    "--master-key) set to a long random secret, and give clients keys made with it "
    "(POST /v1/keys or `adamhub-service keys create`)."
)


@functools.lru_cache(maxsize=1024)  # a request's cost in protected mode; clients are few
def is_loopback(host: str | None) -> bool:
    """Whether a client address is on this machine."""
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


async def principal(request: Request, services: ServicesDep) -> Principal:
    """The caller of a request; counts it against the key's rate limit."""
    if services.settings.master_key is None:
        if not is_loopback(request.client.host if request.client else None):
            raise errors.ProtectedMode(PROTECTED_MODE_HELP)
        caller = LOCAL
    else:
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise errors.Unauthorized(
                "send an API key as `Authorization: Bearer <key>`; this service needs one"
            )
        caller = await services.keys.authenticate(secret.strip())
    if services.limiter.enabled:
        await services.limiter.take(caller.key_id)
    return caller


PrincipalDep = Annotated[Principal, Depends(principal)]


def needs(action: str) -> object:
    """A dependency that refuses callers without ``action`` (for routes with no session)."""

    async def check(caller: PrincipalDep) -> None:
        caller.require(action)

    return Depends(check)
