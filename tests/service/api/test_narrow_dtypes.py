"""bfloat16 gradients in, and answers in bfloat16 or float16 out: the session keeps its
own dtype, and nothing stored changes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from adamhub_service.api.negotiation import narrow_to_bfloat16, widen_bfloat16
from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.optim import AdamConfig, adam_step, init_state
from adamhub_service.testing import LOOPBACK

BINARY = "application/octet-stream"


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(redis_url=redis_url)), client=LOOPBACK) as test_client:
        yield test_client


def test_a_bfloat16_gradient_steps_as_its_exact_float32_value(client: TestClient) -> None:
    start = np.linspace(-1, 1, 8).astype(np.float32)
    sid = client.post("/v1/sessions", json={"params": start.tolist()}).json()["id"]
    gradient = np.random.default_rng(0).normal(size=8).astype(np.float32)
    bits = narrow_to_bfloat16(gradient)
    answer = client.post(
        f"/v1/sessions/{sid}/step",
        content=bits.tobytes(),
        headers={"Content-Type": BINARY, "Accept": BINARY, "Adamhub-Dtype": "bfloat16"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["adamhub-dtype"] == "float32"
    expected = adam_step(init_state(start, AdamConfig()), widen_bfloat16(bits), AdamConfig())
    assert answer.content == expected.params.tobytes()
    short = client.post(
        f"/v1/sessions/{sid}/step",
        content=bits.tobytes()[:-2],
        headers={"Content-Type": BINARY, "Adamhub-Dtype": "bfloat16"},
    )
    assert short.status_code == 422 and short.json()["type"].endswith("wrong-size")


@pytest.mark.parametrize("narrow", ["bfloat16", "float16"])
def test_answers_come_in_the_dtype_asked_for(client: TestClient, narrow: str) -> None:
    start = np.linspace(-1, 1, 8).astype(np.float32)
    sid = client.post("/v1/sessions", json={"params": start.tolist()}).json()["id"]
    headers = {"Accept": BINARY, "Adamhub-Accept-Dtype": narrow}
    stepped = client.post(
        f"/v1/sessions/{sid}/step",
        content=np.ones(8, np.float32).tobytes(),
        headers=headers | {"Content-Type": BINARY},
    )
    assert stepped.headers["adamhub-dtype"] == narrow
    assert len(stepped.content) == 16  # half of float32's
    full = np.frombuffer(
        client.get(f"/v1/sessions/{sid}/params", headers={"Accept": BINARY}).content, np.float32
    )
    got = client.get(f"/v1/sessions/{sid}/params", headers=headers)
    assert got.headers["adamhub-dtype"] == narrow
    if narrow == "bfloat16":
        received = widen_bfloat16(np.frombuffer(got.content, np.uint16))
        assert np.array_equal(received, widen_bfloat16(narrow_to_bfloat16(full)))
    else:
        assert np.array_equal(np.frombuffer(got.content, "<f2"), full.astype(np.float16))
    # The session keeps its dtype: the full answer is unchanged by the narrow ones.
    again = client.get(f"/v1/sessions/{sid}/params", headers={"Accept": BINARY}).content
    assert np.array_equal(np.frombuffer(again, np.float32), full)
    assert (
        client.get(
            f"/v1/sessions/{sid}/params", headers=headers | {"Adamhub-Accept-Dtype": "int8"}
        ).status_code
        == 415
    )


def test_bad_8_bit_gradients_are_refused_and_change_nothing(client: TestClient) -> None:
    sid = client.post("/v1/sessions", json={"size": 5000}).json()["id"]
    scales = np.array([2.0, 0.5], "<f4").tobytes()
    values = (np.arange(5000) % 255 - 127).astype(np.int8).tobytes()
    int8 = {"Content-Type": BINARY, "Adamhub-Dtype": "int8-block4096"}
    cases = [
        (scales + values[:-1], int8, 422, "wrong-size"),  # one byte short
        (scales + values + b"\0", int8, 422, "wrong-size"),  # one byte over
        (np.array([np.nan, 1], "<f4").tobytes() + values, int8, 422, "non-finite-value"),
        (scales + values, {**int8, "Adamhub-Dtype": "int4"}, 415, "unsupported-media-type"),
    ]
    for body, headers, status, kind in cases:
        refused = client.post(f"/v1/sessions/{sid}/step", content=body, headers=headers)
        assert refused.status_code == status, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith(f"/{kind}")
    assert client.get(f"/v1/sessions/{sid}").json()["t"] == 0  # nothing was applied
    # 8-bit blocks are for gradients: parameters in them are 415.
    put = client.put(f"/v1/sessions/{sid}/params", content=scales + values, headers=int8)
    assert put.status_code == 415
    applied = client.post(f"/v1/sessions/{sid}/step", content=scales + values, headers=int8)
    assert applied.status_code == 200 and applied.json()["t"] == 1
