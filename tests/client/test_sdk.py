"""The SDK against a real service process."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import adamhub
from adamhub_service.optim import AdamConfig as ServiceAdamConfig
from adamhub_service.optim import adam_step, init_state


@pytest.fixture
def client(service_url: str) -> adamhub.Client:
    return adamhub.Client(service_url)


def test_a_session_steps_exactly_like_the_optimiser(client: adamhub.Client) -> None:
    rng = np.random.default_rng(1)
    start = rng.normal(size=(4, 5)).astype(np.float32)
    config = adamhub.AdamConfig(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)
    with client:
        session = client.create_session(start, optimizer=config, name="sdk", metadata={"k": 1})
        assert (session.size, session.dtype, session.t, session.name) == (20, "float32", 0, "sdk")
        assert session.optimizer == config
        reference = init_state(
            start.reshape(-1),
            ServiceAdamConfig(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        )
        for _ in range(5):
            gradient = rng.normal(size=(4, 5)).astype(np.float32)  # any shape of the right size
            params = session.step(gradient)
            reference = adam_step(reference, gradient.reshape(-1), reference_config(config))
            assert params.dtype == np.float32 and params.flags.writeable
            assert np.array_equal(params, reference.params)
        assert session.t == session.last_applied_t == 5
        assert np.array_equal(session.params(), reference.params)


def reference_config(config: adamhub.AdamConfig) -> ServiceAdamConfig:
    return ServiceAdamConfig(**dataclasses.asdict(config))


def test_large_initial_params_travel_as_bytes_and_arrive_exactly(client: adamhub.Client) -> None:
    start = np.random.default_rng(2).normal(size=200_000)
    with client:
        session = client.create_session(start, dtype="float64")
        assert session.size == 200_000 and session.t == 0
        assert np.array_equal(session.params(), start)


def test_float16_gradients_halve_the_upload(service_url: str) -> None:
    with adamhub.Client(service_url, gradient_dtype="float16") as client:
        session = client.create_session(size=8, optimizer={"lr": 0.1})
        gradient = np.linspace(-1, 1, 8)
        params = session.step(gradient)
    config = ServiceAdamConfig(lr=0.1)
    expected = adam_step(
        init_state(np.zeros(8, np.float32), config),
        gradient.astype(np.float16).astype(np.float32),
        config,
    )
    assert np.array_equal(params, expected.params)


def test_update_list_and_delete(client: adamhub.Client) -> None:
    with client:
        session = client.create_session(size=3)
        session.update(lr=0.5, betas=(0.8, 0.99), name="renamed")
        assert session.optimizer.lr == 0.5 and session.optimizer.betas == (0.8, 0.99)
        assert session.name == "renamed"
        again = client.session(session.id)
        assert again.optimizer == session.optimizer
        assert session.id in [s.id for s in client.list_sessions()]
        session.set_params([1.0, 2.0, 3.0])
        assert session.params().tolist() == [1.0, 2.0, 3.0]
        session.delete()
        with pytest.raises(adamhub.NotFoundError) as caught:
            client.session(session.id)
        assert caught.value.status_code == 404
        assert caught.value.type == "https://adamhub.dev/errors/session-not-found"


def test_rollback_returns_to_a_kept_step_and_says_what_is_kept(client: adamhub.Client) -> None:
    with client:
        session = client.create_session(size=4, history_steps=3)
        assert session.history_steps == 3
        seen = {0: session.params()}
        for t in range(1, 6):
            seen[t] = session.step(np.full(4, float(t), np.float32))
        session.rollback(3)
        assert session.t == 3
        assert np.array_equal(session.params(), seen[3])
        with pytest.raises(adamhub.HistoryUnavailableError) as caught:
            session.rollback(4)  # not reached (any more)
        assert isinstance(caught.value, adamhub.ConflictError)
        assert caught.value.status_code == 409
        assert caught.value.problem["oldest_t"] == 0  # no snapshot after step 0 yet
        session.update(history_steps=10)
        assert session.history_steps == 10
        assert np.array_equal(session.step(np.full(4, 4.0, np.float32)), seen[4])


def test_errors_carry_the_problem(client: adamhub.Client) -> None:
    with client:
        session = client.create_session(size=3)
        with pytest.raises(adamhub.UnprocessableEntityError) as caught:
            session.step([1.0, float("nan"), 3.0])
        assert caught.value.type == "https://adamhub.dev/errors/non-finite-value"
        assert caught.value.problem["index"] == 1
        with pytest.raises(ValueError, match="has 2 elements"):
            session.step([1.0, 2.0])
        with pytest.raises(adamhub.UnprocessableEntityError):
            client.create_session(size=3, optimizer={"lr": -1})
        session.step([1.0, 2.0, 3.0], idempotency_key="mine")
        with pytest.raises(adamhub.UnprocessableEntityError) as reused:
            session.step([3.0, 2.0, 1.0], idempotency_key="mine")
        assert reused.value.type == "https://adamhub.dev/errors/idempotency-key-reused"
        assert session.t == 1


def test_unreachable_service_is_a_connection_error_after_retries() -> None:
    with (
        adamhub.Client("http://127.0.0.1:9", max_retries=1) as client,
        pytest.raises(adamhub.APIConnectionError),
    ):
        client.session("s_" + "0" * 32)


def test_async_client_has_the_same_face(service_url: str) -> None:
    async def scenario() -> None:
        async with adamhub.AsyncClient(service_url) as client:
            session = await client.create_session(np.ones(4, np.float32), optimizer={"lr": 0.1})
            results = await asyncio.gather(
                *(session.step(np.full(4, float(i))) for i in range(1, 9))
            )
            assert all(r.shape == (4,) for r in results)
            await session.refresh()
            assert session.t == 8
            final = await session.params()
            # The answer of the step applied last is the current state; the others differ.
            assert sum(np.array_equal(final, r) for r in results) == 1
            await session.update(lr=0.2)
            assert session.optimizer.lr == 0.2
            assert session.id in [s.id for s in await client.list_sessions()]
            await session.delete()
            with pytest.raises(adamhub.NotFoundError):
                await client.session(session.id)

    asyncio.run(scenario())


def test_retries_keep_one_idempotency_key_and_honour_retry_after() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            return httpx.Response(
                503, headers={"Retry-After": "0"}, json={"type": "x/store-unavailable"}
            )
        body = np.zeros(2, np.float32).tobytes()
        return httpx.Response(
            200, content=body, headers={"Adamhub-Step": "1", "Adamhub-Applied-Step": "1"}
        )

    http = httpx.Client(transport=httpx.MockTransport(answer))
    client = adamhub.Client("http://adamhub.test", http_client=http, max_retries=2)
    resource = {"id": "s_" + "0" * 32, "t": 0, "size": 2, "dtype": "float32", "optimizer": {}}
    params = adamhub.Session(client, resource).step([1.0, 2.0])
    assert params.tolist() == [0.0, 0.0]
    assert len(seen) == 3
    assert len({r.headers["idempotency-key"] for r in seen}) == 1


def test_a_create_is_retried_with_one_idempotency_key() -> None:
    seen: list[httpx.Request] = []
    resource = {"id": "s_" + "0" * 32, "t": 0, "size": 3, "dtype": "float32", "optimizer": {}}

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            return httpx.Response(502)
        return httpx.Response(201, json=resource)

    client = adamhub.Client(
        "http://adamhub.test",
        http_client=httpx.Client(transport=httpx.MockTransport(answer)),
        initial_retry_delay=0.01,
    )
    assert client.create_session(size=3).id == resource["id"]
    assert len(seen) == 3
    assert len({r.headers["idempotency-key"] for r in seen}) == 1


def test_a_key_is_not_made_twice_when_the_outcome_is_unknown() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, json={"type": "https://adamhub.dev/errors/outcome-unknown"})

    client = adamhub.Client(
        "http://adamhub.test", http_client=httpx.Client(transport=httpx.MockTransport(answer))
    )
    with pytest.raises(adamhub.ServiceUnavailableError):
        client.keys.create(tenant="acme")
    assert len(seen) == 1


def test_checkpoint_save_import_and_fork(client: adamhub.Client, tmp_path: Path) -> None:
    with client:
        session = client.create_session(size=5, optimizer={"lr": 0.1}, name="first")
        rng = np.random.default_rng(3)
        for _ in range(3):
            session.step(rng.normal(size=5).astype(np.float32))
        session.save(tmp_path / "run.safetensors")
        from_file = client.import_session(tmp_path / "run.safetensors", name="from-file")
        from_bytes = client.import_session(session.checkpoint())
        fork = session.fork(name="fork")
        assert (from_file.t, from_bytes.t, fork.t) == (3, 3, 3)
        assert from_file.name == "from-file" and fork.name == "fork"
        grad = rng.normal(size=5).astype(np.float32)
        results = {s.step(grad).tobytes() for s in (session, from_file, from_bytes, fork)}
        assert len(results) == 1


def test_a_gradient_beyond_max_staleness_is_refused_with_the_newest_params(
    client: adamhub.Client,
) -> None:
    with client:
        fast = client.create_session(size=3, max_staleness=1)
        assert fast.max_staleness == 1
        slow = client.session(fast.id)  # a second worker, at t = 0
        fast.step(np.ones(3, np.float32))
        slow.step(np.ones(3, np.float32))  # one step behind: accepted
        for _ in range(2):
            fast.step(np.ones(3, np.float32))
        assert slow.t == 2 and fast.t == 4
        with pytest.raises(adamhub.StaleGradientError) as caught:
            slow.step(np.ones(3, np.float32))  # computed at t=2, two steps behind t=4
        assert isinstance(caught.value, adamhub.ConflictError)
        assert caught.value.problem["t"] == 4
        assert np.array_equal(caught.value.params, fast.params())
        assert slow.t == 4  # fetched: the next gradient is fresh
        slow.step(np.ones(3, np.float32))
        assert slow.t == 5


def test_a_contribution_answered_202_is_followed_until_its_round_closes(
    service_url: str,
) -> None:
    # A 2 s read timeout makes the SDK ask the server to wait 1 s, then long-poll.
    first = adamhub.Client(service_url, timeout=2.0)
    assert first.round_wait_seconds == 1.0
    session = first.create_session(size=4, dtype="float64", rounds={"contributions": 2})
    assert session.rounds == {"contributions": 2, "min_contributions": 1, "aggregate": "mean"}
    answers: dict[str, np.ndarray] = {}

    def contribute() -> None:
        answers["first"] = session.step(np.ones(4), samples=3)

    thread = threading.Thread(target=contribute)
    thread.start()
    time.sleep(2.5)  # past the first 202 and into a long-poll
    assert thread.is_alive()
    with adamhub.Client(service_url) as second:
        other = second.session(session.id)
        answers["second"] = other.step(-np.ones(4), samples=1)
    thread.join(10)
    assert session.last_applied_t == other.last_applied_t == 1
    assert session.t == 1
    assert np.array_equal(answers["first"], answers["second"])
    # mean (3·1 − 1) / 4 = 0.5 > 0: Adam's first step moves every parameter by −lr
    assert np.allclose(answers["first"], -1e-3)
    first.close()


def test_async_contributions_close_a_round(service_url: str) -> None:
    async def main() -> None:
        async with adamhub.AsyncClient(service_url) as client:
            session = await client.create_session(size=3, rounds={"contributions": 3})
            workers = [await client.session(session.id) for _ in range(3)]
            results = await asyncio.gather(
                *(w.step(np.full(3, float(i)), samples=i + 1) for i, w in enumerate(workers))
            )
            assert all(w.last_applied_t == 1 for w in workers)
            assert all(np.array_equal(results[0], r) for r in results)

    asyncio.run(main())


def test_history_find_and_expiry_settings(client: adamhub.Client) -> None:
    with client:
        session = client.create_session(
            size=2, name="sdk-history-a", history_points=3, expires_after_idle_seconds=3600
        )
        assert (session.history_points, session.expires_after_idle_seconds) == (3, 3600)
        for loss in (3.0, 2.0, float("nan"), 1.0):  # a diverged batch's loss is not sent
            session.step(np.ones(2, np.float32), loss=loss)
        assert [(p["t"], p["loss"]) for p in session.history()] == [(2, 2.0), (3, None), (4, 1.0)]
        assert [p["t"] for p in session.history(after_t=2, limit=1)] == [3]
        session.update(history_points=100, expires_after_idle_seconds=120)
        assert (session.history_points, session.expires_after_idle_seconds) == (100, 120)
        other = client.create_session(size=2, name="sdk-history-b")
        found = client.list_sessions(name="sdk-history-*", order="-created_at")
        assert [s.id for s in found] == [other.id, session.id]


def test_tags_and_every_setting_through_the_sdk(client: adamhub.Client) -> None:
    with client:
        session = client.create_session(size=2, name="sdk-tags-a", tags=["sdk-exp", "sdk-gpu"])
        other = client.create_session(size=2, name="sdk-tags-b", tags=["sdk-exp"])
        assert session.tags == ["sdk-exp", "sdk-gpu"]
        assert session.settings["tags"] == ["sdk-exp", "sdk-gpu"]
        assert [s.id for s in client.list_sessions(tag="sdk-exp")] == [session.id, other.id]
        assert [s.id for s in client.list_sessions(tag=["sdk-exp", "sdk-gpu"])] == [session.id]
        assert [s.id for s in client.list_sessions(tag="sdk-gpu", name="*-b")] == []
        session.update(tags=["sdk-best"], max_staleness=2)
        assert (session.tags, session.max_staleness) == (["sdk-best"], 2)
        session.update(max_staleness=None)  # back to its default: no bound
        assert session.max_staleness is None
        with pytest.raises(ValueError, match="fixed"):
            session.update(rounds={"contributions": 2})
        with pytest.raises(adamhub.ValidationFailedError) as refused:
            session.update(tags=["no spaces"])
        assert refused.value.status_code == 422
        fork = session.fork(name="sdk-tags-fork")
        assert (fork.name, fork.tags) == ("sdk-tags-fork", ["sdk-best"])
        imported = client.import_session(session.checkpoint(), name="in", tags=["sdk-in"])
        assert (imported.name, imported.tags) == ("in", ["sdk-in"])


def test_async_sessions_take_tags_too(service_url: str) -> None:
    async def scenario() -> None:
        async with adamhub.AsyncClient(service_url) as client:
            session = await client.create_session(size=2, tags=["async-tag"])
            assert [s.id for s in await client.list_sessions(tag="async-tag")] == [session.id]
            await session.update(tags=[])
            assert session.tags == []
            fork = await session.fork(tags=["async-fork"])
            assert fork.tags == ["async-fork"]

    asyncio.run(scenario())


def test_bfloat16_gradients_and_narrow_answers(service_url: str) -> None:
    start = np.linspace(-1, 1, 6).astype(np.float32)
    gradient = np.array([0.1, -0.2, 0.3, 1e-3, -7.0, 2.5], np.float32)
    with (
        adamhub.Client(service_url, gradient_dtype="bfloat16", answer_dtype="bfloat16") as narrow,
        adamhub.Client(service_url) as full,
    ):
        session = narrow.create_session(start)
        params = session.step(gradient)
        exact = full.session(session.id).params()
        # The step used the bfloat16 gradient; the answer is θ rounded to bfloat16.
        bits = (gradient.view(np.uint32) + ((gradient.view(np.uint32) >> 16) & 1) + 0x7FFF) >> 16
        sent = (bits << 16).astype(np.uint32).view(np.float32)
        reference = full.create_session(start)
        assert np.array_equal(reference.step(sent), exact)
        assert params.dtype == np.float32
        assert np.allclose(params, exact, rtol=2**-8) and not np.array_equal(params, exact)
        assert np.array_equal(
            session.params(),
            ((exact.view(np.uint32) + ((exact.view(np.uint32) >> 16) & 1) + 0x7FFF) >> 16 << 16)
            .astype(np.uint32)
            .view(np.float32),
        )
