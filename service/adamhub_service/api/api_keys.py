"""``/v1/keys``: make, list, read and revoke API keys."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from adamhub_service.api import openapi
from adamhub_service.api.auth import PrincipalDep
from adamhub_service.api.bodies import json_model
from adamhub_service.api.deps import ServicesDep
from adamhub_service.api.negotiation import JSON
from adamhub_service.api.schemas import KeyCreate, KeyCreated, KeyList, KeyOut, render
from adamhub_service.tenancy.api_keys import NewKey

router = APIRouter(prefix="/v1", tags=["keys"])
KeyId = Path(description="A key id: `k_` and 24 hex digits.")


@router.post(
    "/keys",
    status_code=201,
    response_model=KeyCreated,
    responses={201: {"headers": openapi.LOCATION_HEADER}, **openapi.problems(413, 415, 422)},
    openapi_extra=openapi.json_body(KeyCreate),
    summary="Make an API key",
)
async def create_key(request: Request, services: ServicesDep, caller: PrincipalDep) -> Response:
    """A new key of a tenant; its secret is in this answer only."""
    settings = services.settings
    spec = await json_model(
        request,
        KeyCreate,
        limit=settings.max_json_bytes,
        stall_seconds=settings.body_timeout_seconds,
    )
    key, secret = await services.keys.create(
        NewKey(
            tenant=spec.tenant or caller.tenant,
            actions=tuple(spec.actions),
            sessions=tuple(spec.sessions),
            expires_at=spec.expires_at,
            description=spec.description,
        ),
        caller,
    )
    return Response(
        render(KeyCreated.with_secret(key, secret)),
        status_code=201,
        media_type=JSON,
        headers={"Location": f"/v1/keys/{key.id}"},
    )


@router.get("/keys", response_model=KeyList, responses=openapi.problems(), summary="List keys")
async def list_keys(services: ServicesDep, caller: PrincipalDep) -> Response:
    """The keys the caller manages (never their secrets)."""
    keys = await services.keys.list(caller)
    return Response(
        render(KeyList.model_construct(keys=[KeyOut.of(k) for k in keys])), media_type=JSON
    )


@router.get(
    "/keys/{key_id}", response_model=KeyOut, responses=openapi.problems(404), summary="Get a key"
)
async def get_key(services: ServicesDep, caller: PrincipalDep, key_id: str = KeyId) -> Response:
    """One key (never its secret)."""
    return Response(render(KeyOut.of(await services.keys.get(key_id, caller))), media_type=JSON)


@router.delete(
    "/keys/{key_id}",
    status_code=204,
    responses={204: {"description": "Revoked."}, **openapi.problems(404)},
    summary="Revoke a key",
)
async def revoke_key(services: ServicesDep, caller: PrincipalDep, key_id: str = KeyId) -> Response:
    """Revoke a key: every replica refuses it within a second."""
    await services.keys.revoke(key_id, caller)
    return Response(status_code=204)
