"""Checkpoints, imports and forks: one step's state, continued bit for bit."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from fastapi.testclient import TestClient

from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.testing import LOOPBACK

BINARY = "application/octet-stream"


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, chunk_elements=4, max_size=10_000)
    with TestClient(create_app(settings), client=LOOPBACK) as test_client:
        yield test_client


def metadata_of(file: bytes) -> dict[str, str]:
    (length,) = struct.unpack("<Q", file[:8])
    found: dict[str, str] = json.loads(file[8 : 8 + length])["__metadata__"]
    return found


def step(client: TestClient, sid: str, grad: np.ndarray) -> bytes:
    response = client.post(
        f"/v1/sessions/{sid}/step",
        content=grad.tobytes(),
        headers={"Content-Type": BINARY, "Accept": BINARY},
    )
    assert response.status_code == 200, response.text
    return bytes(response.content)


def test_a_checkpoint_an_import_and_a_fork_continue_as_the_original(client: TestClient) -> None:
    body: dict[str, Any] = {
        "params": [0.5, -1.0, 2.0, 0.0, 1.5, -0.5],
        "optimizer": {"lr": 0.05, "amsgrad": True, "max_grad_norm": 2.0,
                      "schedule": {"kind": "warmup_cosine", "warmup_steps": 3,
                                   "total_steps": 20, "final_lr_ratio": 0.1}},
        "param_groups": [{"size": 4}, {"size": 2, "lr": 0.01}],
        "name": "original",
        "metadata": {"run": 7},
    }  # fmt: skip
    sid = client.post("/v1/sessions", json=body).json()["id"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        step(client, sid, rng.normal(size=6).astype(np.float32))
    exported = client.get(f"/v1/sessions/{sid}/checkpoint")
    assert exported.status_code == 200
    assert exported.headers["content-type"] == BINARY
    assert exported.headers["adamhub-step"] == "5"
    file = exported.content
    tensors = safetensors.numpy.load(file)
    assert sorted(tensors) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "params"]
    assert all(t.dtype == np.float32 and t.shape == (6,) for t in tensors.values())
    meta = metadata_of(file)
    assert meta["format"] == "adamhub-checkpoint/1" and meta["t"] == "5"
    assert meta["dtype"] == "float32"
    assert json.loads(meta["optimizer"])["schedule"]["kind"] == "warmup_cosine"
    assert json.loads(meta["param_groups"]) == [{"size": 4}, {"size": 2, "lr": 0.01}]
    params = client.get(f"/v1/sessions/{sid}/params", headers={"Accept": BINARY}).content
    assert tensors["params"].tobytes() == params

    imported = client.post(
        "/v1/sessions/import?name=copy", content=file, headers={"Content-Type": BINARY}
    )
    assert imported.status_code == 201, imported.text
    copy = imported.json()
    assert copy["t"] == 5 and copy["name"] == "copy"
    assert copy["optimizer"] == client.get(f"/v1/sessions/{sid}").json()["optimizer"]
    assert copy["param_groups"] == body["param_groups"]
    forked = client.post(f"/v1/sessions/{sid}/fork")
    assert forked.status_code == 201, forked.text
    fork = forked.json()
    assert fork["name"] == "original" and fork["metadata"] == {"run": 7} and fork["t"] == 5
    named = client.post(f"/v1/sessions/{sid}/fork", json={"name": "other"})
    assert named.status_code == 201 and named.json()["name"] == "other"

    for _ in range(8):
        grad = rng.normal(size=6).astype(np.float32)
        answers = {step(client, s, grad) for s in (sid, copy["id"], fork["id"])}
        assert len(answers) == 1  # bit-identical
    files = [client.get(f"/v1/sessions/{s}/checkpoint").content for s in (sid, copy["id"])]
    assert metadata_of(files[0]) == metadata_of(files[1])  # same step, same settings
    first, second = (safetensors.numpy.load(f) for f in files)
    assert all(first[name].tobytes() == second[name].tobytes() for name in first)


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        (b"short", "shorter than its header"),
        (b"not a checkpoint", "runs past the end"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ", "not JSON"),
        (safetensors.numpy.save({"params": np.ones(3, np.float32)}), "no metadata"),
        (
            safetensors.numpy.save(
                {"params": np.ones(3, np.float32)},
                metadata={"format": "someone-else/1", "t": "1", "dtype": "float32"},
            ),
            "format",
        ),
    ],
)
def test_an_import_that_is_not_a_checkpoint_is_422(
    client: TestClient, file: bytes, expected: str
) -> None:
    response = client.post("/v1/sessions/import", content=file, headers={"Content-Type": BINARY})
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "https://adamhub.dev/errors/invalid-checkpoint"
    assert expected in problem["detail"]
    assert client.get("/v1/sessions").json()["sessions"] == []


def test_an_import_of_inconsistent_tensors_is_422(client: TestClient) -> None:
    sid = client.post("/v1/sessions", json={"size": 3}).json()["id"]
    file = client.get(f"/v1/sessions/{sid}/checkpoint").content
    tensors = safetensors.numpy.load(file)
    meta = metadata_of(file)
    for broken, expected in (
        ({**tensors, "exp_avg": np.ones(4, np.float32)}, "vector of 3"),
        ({**tensors, "exp_avg_sq": np.full(3, np.nan, np.float32)}, "not finite"),
        ({k: v for k, v in tensors.items() if k != "exp_avg"}, "tensors must be"),
        ({**tensors, "params": tensors["params"].astype(np.float64)}, "float32 vector"),
    ):
        data = safetensors.numpy.save(broken, metadata=meta)
        response = client.post(
            "/v1/sessions/import", content=data, headers={"Content-Type": BINARY}
        )
        assert response.status_code == 422, expected
        assert expected in response.json()["detail"]
    json_import = client.post("/v1/sessions/import", json={"params": [1.0]})
    assert json_import.status_code == 415
    assert client.get(f"/v1/sessions/s_{'0' * 32}/checkpoint").status_code == 404
    assert client.post(f"/v1/sessions/s_{'0' * 32}/fork").status_code == 404
