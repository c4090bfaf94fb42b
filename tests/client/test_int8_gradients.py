"""8-bit gradients (``gradient_dtype="int8"``, wire ``int8-block4096``) with error
feedback: the SDK's encoding is what the service reads, the session steps on exactly
that, the residual carries what rounding lost, and RemoteAdam keeps it in its state."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import adamhub
from adamhub.quantization import BLOCK, ErrorFeedback, dequantize, quantize, wire_body
from adamhub_service.model.quantized import Int8Blocks, wire_bytes
from adamhub_service.optim import AdamConfig, adam_step, init_state

finite = st.floats(-(2.0**100), 2.0**100, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 3 * BLOCK + 5), elements=finite))
def test_what_the_sdk_sends_is_what_the_service_reads(vector: np.ndarray) -> None:
    scales, quantized = quantize(vector)
    body = wire_body(scales, quantized)
    assert len(body) == wire_bytes(vector.size)
    read = Int8Blocks.from_wire(body, vector.size).dequantized()
    assert read.tobytes() == dequantize(scales, quantized).tobytes()
    # Within half a step of its block's scale / 127 of the value sent.
    per_element = np.repeat(scales, BLOCK)[: vector.size].astype(np.float64)
    assert np.all(np.abs(read.astype(np.float64) - vector) <= per_element / 127 * 0.5001 + 1e-30)


def test_error_feedback_loses_nothing_over_steps() -> None:
    rng = np.random.default_rng(0)
    feedback = ErrorFeedback(5000)
    total_sent = np.zeros(5000, np.float64)
    total_given = np.zeros(5000, np.float64)
    for _ in range(50):
        gradient = rng.normal(size=5000).astype(np.float32) * rng.uniform(0.1, 10)
        body, feedback = feedback.encode(gradient)
        total_sent += Int8Blocks.from_wire(body, 5000).dequantized()
        total_given += gradient
    # What was not sent yet is exactly the residual (to float32 rounding).
    assert np.allclose(total_given - total_sent, feedback.residual, atol=1e-3)
    assert np.abs(feedback.residual).max() < np.abs(total_given).max() / 100


def test_int8_steps_are_a_quarter_of_the_bytes_and_exact_on_what_arrives(
    service_url: str,
) -> None:
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    size = 10_000
    config = AdamConfig(lr=0.01)
    rng = np.random.default_rng(1)
    with adamhub.Client(service_url, http_client=http, gradient_dtype="int8") as client:
        session = client.create_session(size=size, optimizer={"lr": 0.01})
        state = init_state(np.zeros(size, np.float32), config)
        for _ in range(8):
            gradient = rng.normal(size=size).astype(np.float32)
            params = session.step(gradient)
            body = sent[-1].content
            assert sent[-1].headers["adamhub-dtype"] == "int8-block4096"
            assert len(body) == 4 * 3 + size  # a quarter of float32's 40,000, and 3 scales
            state = adam_step(state, Int8Blocks.from_wire(body, size).dequantized(), config)
            assert params.tobytes() == state.params.tobytes()
        with pytest.raises(ValueError, match="segments"):
            session.step(np.ones(size), segments=[0])
    http.close()


def test_a_step_that_fails_keeps_the_residual_it_had(service_url: str) -> None:
    with adamhub.Client(service_url, gradient_dtype="int8", max_retries=0) as client:
        session = client.create_session(size=100)
        session.step(np.linspace(-1, 1, 100))
        kept = session.error_feedback
        assert kept is not None and np.any(kept.residual != 0)
        session.delete()
        with pytest.raises(adamhub.NotFoundError):
            session.step(np.ones(100))
        assert session.error_feedback is kept


def test_remote_adam_keeps_the_residual_in_its_state_dict(service_url: str) -> None:
    torch = pytest.importorskip("torch", reason="RemoteAdam needs torch")
    from adamhub.torch import RemoteAdam

    torch.manual_seed(0)
    model = torch.nn.Linear(50, 3)
    with adamhub.Client(service_url) as client:
        optimizer = RemoteAdam(model.parameters(), lr=0.01, client=client, gradient_dtype="int8")
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(8, 50)).pow(2).mean().backward()
            optimizer.step()
        state = optimizer.state_dict()
        residual = state["adamhub"]["error_feedback"]
        assert residual.shape == (153,) and torch.any(residual != 0)
        resumed = RemoteAdam(model.parameters(), lr=0.01, client=client, gradient_dtype="int8")
        resumed.load_state_dict(state)
        assert resumed.session.id == optimizer.session.id
        feedback = resumed.session.error_feedback
        assert feedback is not None
        assert np.array_equal(feedback.residual, residual.numpy())
        assert resumed.session.gradient_dtype == "int8"


def test_the_log_keeps_8_bit_steps_as_they_came_and_replays_them_exactly(
    redis_url: str, redis_client: Any, tmp_path: Any
) -> None:
    """The log entry of an 8-bit step is its scales and int8 values (a quarter of
    float32's bytes); a replica that never held the state rebuilds the same bits from
    them; a rollback reaches back through them; a delete leaves nothing."""
    from adamhub_service.testing import ServiceProcess

    writer = ServiceProcess("--redis-url", redis_url, log_path=tmp_path / "w.log").start()
    reader = ServiceProcess(
        "--redis-url", redis_url, env={"ADAMHUB_CACHE_BYTES": "0"}, log_path=tmp_path / "r.log"
    ).start()
    size = 300_000  # two chunks of 262,144
    rng = np.random.default_rng(5)
    try:
        with (
            adamhub.Client(writer.base_url, gradient_dtype="int8") as client,
            adamhub.Client(reader.base_url) as other,
        ):
            session = client.create_session(size=size, history_steps=10)
            for _ in range(6):
                params = session.step(rng.normal(size=size).astype(np.float32))
            log = redis_client.hgetall(f"adamhub:{{{session.id}}}:log")
            entries = [value.decode().split(" ") for value in log.values()]
            assert entries and all(entry[1] == "int8-block4096" for entry in entries)
            assert {int(entry[2]) for entry in entries} == {wire_bytes(size)}
            stored = sum(
                redis_client.strlen(key)
                for key in redis_client.keys(f"adamhub:{{{session.id}}}:c:*")
                if key.decode().split(":")[-2] in "gs"
                and key.decode().split(":")[-3] in {entry[0] for entry in entries}
            )
            assert stored == len(entries) * wire_bytes(size)  # not 4 bytes a number
            rebuilt = other.session(session.id)
            assert rebuilt.params().tobytes() == params.tobytes()  # replayed from the log
            rebuilt.rollback(3)
            assert other.session(session.id).t == 3
            session.delete()
            assert redis_client.keys(f"adamhub:{{{session.id}}}:*") == []
    finally:
        writer.stop()
        reader.stop()


@pytest.mark.parametrize("magnitude", [1e-44, 1e-38, 1e-30, 1.0, 3e38])
def test_tiny_and_huge_blocks_quantize_to_their_own_scale(magnitude: float) -> None:
    vector = (np.linspace(-1, 1, BLOCK + 7) * magnitude).astype(np.float32)
    with np.errstate(all="raise"):  # no overflow, no NaN on the way
        scales, quantized = quantize(vector)
    assert quantized.min() == -127 and quantized.max() == 127
    assert quantized[BLOCK // 2 + 1] in (-1, 0, 1)  # the middle of the first block
    assert np.all(scales == np.float32(magnitude))
