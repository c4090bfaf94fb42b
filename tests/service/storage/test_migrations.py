"""A store written under the key names of earlier versions (no hash tags on tenant and
API keys) is moved to today's names when a process starts, and serves as before."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.storage.migrations import new_name
from adamhub_service.testing import LOOPBACK

# About one Redis: its own replica / an earlier version's key names (a cluster never held them).
pytestmark = pytest.mark.standalone_only

MASTER = "master-key-0123456789abcdef"


def serve(redis_url: str, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(redis_url=redis_url, **settings)), client=LOOPBACK)


def back_to_old_names(store: redis.Redis) -> dict[str, str]:
    """Rename today's tenant and API keys as an earlier version stored them: old → new."""
    moved = {}
    for raw in store.keys("adamhub:tenant:{*") + store.keys("adamhub:{keys}:*"):
        new = raw.decode() if isinstance(raw, bytes) else raw
        if new.startswith("adamhub:tenant:{default}:sessions"):
            old = "adamhub:sessions"
        elif new.startswith("adamhub:tenant:{"):
            tenant, _, rest = new[len("adamhub:tenant:{") :].partition("}:")
            old = f"adamhub:tenant:{tenant}:{rest}"
        else:
            rest = new[len("adamhub:{keys}:") :]
            old = "adamhub:keys" if rest == "index" else f"adamhub:{rest}"
        assert new_name(old) == new
        store.rename(new, old)
        moved[old] = new
    return moved


def test_old_names_are_moved_at_start_and_everything_still_works(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with serve(redis_url, master_key=MASTER) as client:
        made = client.post(
            "/v1/keys", json={"tenant": "acme"}, headers={"Authorization": f"Bearer {MASTER}"}
        ).json()
        acme = {"Authorization": f"Bearer {made['key']}"}
        created = client.post(
            "/v1/sessions", json={"size": 3}, headers=acme | {"Idempotency-Key": "c1"}
        )
        assert created.status_code == 201
        mine = client.post("/v1/sessions", json={"size": 2}, headers=auth_master())
        assert mine.status_code == 201
    moved = back_to_old_names(redis_client)
    assert {"adamhub:sessions", "adamhub:keys", "adamhub:tenant:acme:sizes"} <= set(moved)
    assert any(old.startswith("adamhub:tenant:acme:create:") for old in moved)
    create_ttl = next(
        redis_client.pttl(old) for old in moved if old.startswith("adamhub:tenant:acme:create:")
    )
    assert create_ttl > 0

    with serve(redis_url, master_key=MASTER) as client:
        # Every key under its new name, the create key with its TTL.
        for old, new in moved.items():
            assert not redis_client.exists(old) and redis_client.exists(new), old
        new_create = next(new for old, new in moved.items() if ":create:" in old)
        assert 0 < redis_client.pttl(new_create) <= create_ttl
        # The key authenticates, its tenant lists its session, a create replays.
        listed = client.get("/v1/sessions", headers=acme).json()
        assert [s["id"] for s in listed["sessions"]] == [created.json()["id"]]
        again = client.post(
            "/v1/sessions", json={"size": 3}, headers=acme | {"Idempotency-Key": "c1"}
        )
        assert again.json()["id"] == created.json()["id"]
        listed = client.get("/v1/sessions", headers=auth_master()).json()
        assert mine.json()["id"] in [s["id"] for s in listed["sessions"]]
        keys = client.get("/v1/keys", headers=auth_master()).json()["keys"]
        assert [key["id"] for key in keys] == [made["id"]]
    # A second start finds nothing to move.
    before = sorted(redis_client.keys("*"))
    with serve(redis_url, master_key=MASTER):
        pass
    assert sorted(redis_client.keys("*")) == before


def auth_master() -> dict[str, str]:
    return {"Authorization": f"Bearer {MASTER}"}


def test_only_old_names_have_new_ones() -> None:
    assert new_name("adamhub:tenant:{acme}:sizes") is None
    assert new_name("adamhub:{keys}:index") is None
    assert new_name("adamhub:{s_1}:meta") is None
    assert new_name("adamhub:expiring") is None
    assert new_name("adamhub:tenant:acme:create:k:with:colons") == (
        "adamhub:tenant:{acme}:create:k:with:colons"
    )
