"""Tags: on create, PATCH, import and fork; listing by every tag named, with name,
order and cursors; bad tags refused with 422, changing nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.testing import LOOPBACK

BINARY = "application/octet-stream"


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(redis_url=redis_url)), client=LOOPBACK) as test_client:
        yield test_client


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/sessions", json={"size": 2, **body})
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()
    return document


def listed(client: TestClient, query: str) -> list[str]:
    response = client.get(f"/v1/sessions?{query}")
    assert response.status_code == 200, response.text
    return [s["name"] for s in response.json()["sessions"]]


def test_tags_are_set_on_create_replaced_by_patch_and_cleared_by_null(client: TestClient) -> None:
    made = create(client, name="a", tags=["exp:7", "gpu", "exp:7"])
    assert made["tags"] == ["exp:7", "gpu"]  # each once, in the order given
    assert create(client, name="b")["tags"] == []
    sid = made["id"]
    patched = client.patch(f"/v1/sessions/{sid}", json={"tags": ["best"]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["tags"] == ["best"]
    assert client.get(f"/v1/sessions/{sid}").json()["tags"] == ["best"]
    cleared = client.patch(f"/v1/sessions/{sid}", json={"tags": None})
    assert cleared.json()["tags"] == []
    # Other settings are untouched by a tags change.
    assert cleared.json()["name"] == "a"


@pytest.mark.parametrize(
    "tags",
    [
        ["has space"],
        [""],
        ["x" * 65],
        [f"t{i}" for i in range(17)],
        ["ok", 3],
        "not-a-list",
        ["é"],
    ],
)
def test_bad_tags_are_422_and_change_nothing(
    client: TestClient, redis_client: redis.Redis, tags: Any
) -> None:
    refused = client.post("/v1/sessions", json={"size": 2, "tags": tags})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert redis_client.keys("adamhub:{*") == []
    sid = create(client, tags=["keep"])["id"]
    meta_before = redis_client.hgetall(f"adamhub:{{{sid}}}:meta")
    assert client.patch(f"/v1/sessions/{sid}", json={"tags": tags}).status_code == 422
    assert redis_client.hgetall(f"adamhub:{{{sid}}}:meta") == meta_before
    forked = client.post(f"/v1/sessions/{sid}/fork", json={"tags": tags})
    assert forked.status_code == 422


def test_the_list_has_the_sessions_with_every_tag_named(client: TestClient) -> None:
    create(client, name="run-1", tags=["exp", "gpu"])
    create(client, name="run-2", tags=["exp"])
    create(client, name="run-3", tags=["gpu", "exp", "best"])
    create(client, name="other", tags=["gpu"])
    assert listed(client, "tag=exp") == ["run-1", "run-2", "run-3"]
    assert listed(client, "tag=exp&tag=gpu") == ["run-1", "run-3"]
    assert listed(client, "tag=exp&tag=gpu&tag=best") == ["run-3"]
    assert listed(client, "tag=none") == []
    # With name= and order=.
    assert listed(client, "tag=gpu&name=run") == ["run-1", "run-3"]
    assert listed(client, "tag=exp&order=-created_at") == ["run-3", "run-2", "run-1"]
    # A page at a time.
    first = client.get("/v1/sessions?tag=exp&limit=2").json()
    assert [s["name"] for s in first["sessions"]] == ["run-1", "run-2"]
    rest = client.get(f"/v1/sessions?tag=exp&limit=2&cursor={first['next_cursor']}").json()
    assert [s["name"] for s in rest["sessions"]] == ["run-3"]
    assert rest["next_cursor"] is None
    # A bad tag in the query is refused.
    assert client.get("/v1/sessions?tag=has%20space").status_code == 422


def test_fork_keeps_the_tags_or_takes_new_ones(client: TestClient) -> None:
    sid = create(client, name="base", tags=["exp", "gpu"])["id"]
    kept = client.post(f"/v1/sessions/{sid}/fork")
    assert kept.status_code == 201
    assert kept.json()["tags"] == ["exp", "gpu"]
    named = client.post(f"/v1/sessions/{sid}/fork", json={"name": "b"}).json()
    assert (named["name"], named["tags"]) == ("b", ["exp", "gpu"])
    retagged = client.post(f"/v1/sessions/{sid}/fork", json={"tags": ["branch"]}).json()
    assert (retagged["name"], retagged["tags"]) == ("base", ["branch"])
    nulled = client.post(f"/v1/sessions/{sid}/fork", json={"tags": None})
    assert nulled.status_code == 422


def test_import_takes_tags_from_the_query(client: TestClient) -> None:
    sid = create(client, tags=["original"])["id"]
    file = client.get(f"/v1/sessions/{sid}/checkpoint").content
    imported = client.post(
        "/v1/sessions/import?name=resumed&tag=resume&tag=exp:1",
        content=file,
        headers={"Content-Type": BINARY},
    )
    assert imported.status_code == 201, imported.text
    assert (imported.json()["name"], imported.json()["tags"]) == ("resumed", ["resume", "exp:1"])
    bad = client.post(
        "/v1/sessions/import?tag=no%20spaces", content=file, headers={"Content-Type": BINARY}
    )
    assert bad.status_code == 422


def test_patch_null_puts_a_setting_back_to_its_default_where_it_may_be_null(
    client: TestClient,
) -> None:
    sid = create(client, name="n", metadata={"a": 1}, max_staleness=3, history_steps=4)["id"]
    reset = client.patch(
        f"/v1/sessions/{sid}", json={"name": None, "metadata": None, "max_staleness": None}
    )
    assert reset.status_code == 200, reset.text
    body = reset.json()
    assert (body["name"], body["metadata"], body["max_staleness"]) == (None, {}, None)
    assert body["history_steps"] == 4
    # A setting that is a number is never null.
    for name in ("history_steps", "history_points"):
        refused = client.patch(f"/v1/sessions/{sid}", json={name: None})
        assert refused.status_code == 422, name
    # Rounds are fixed at creation.
    assert client.patch(f"/v1/sessions/{sid}", json={"rounds": None}).status_code == 422


def test_a_query_parameter_of_one_value_given_twice_is_422(client: TestClient) -> None:
    create(client, name="only", tags=["a", "b"])
    assert listed(client, "tag=a&tag=b") == ["only"]
    refused = client.get("/v1/sessions?name=only&name=other")
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["loc"] == ["query", "name"]
    assert client.get("/v1/sessions?limit=1&limit=2").status_code == 422
