"""The sync client's direct lane: steps and parameter reads over ``http.client``, with
the answers, errors, retries and exactly-once of the httpx path."""

from __future__ import annotations

import socket
import threading

import httpx
import numpy as np
import pytest

import adamhub
from adamhub._base_client import RequestSpec
from adamhub._direct import DirectLane
from adamhub_service.testing import DroppingProxy

SIZE = 500


def gradient(index: int) -> np.ndarray:
    return np.random.default_rng(index).normal(size=SIZE).astype(np.float32)


@pytest.fixture
def httpx_sends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests httpx sends (the lane's never reach it)."""
    sent: list[str] = []
    original = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: object) -> httpx.Response:
        sent.append(f"{request.method} {request.url.path}")
        return original(self, request, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx.Client, "send", send)
    return sent


def test_steps_and_reads_go_over_the_lane_with_the_same_bits(
    service_url: str, httpx_sends: list[str]
) -> None:
    with (
        adamhub.Client(service_url) as client,
        adamhub.Client(service_url, http_client=httpx.Client()) as through_httpx,
    ):
        lane = client.create_session(size=SIZE, optimizer={"lr": 0.01})
        plain = through_httpx.create_session(size=SIZE, optimizer={"lr": 0.01})
        httpx_sends.clear()
        for index in range(20):
            answered = lane.step(gradient(index))
            assert np.array_equal(answered, plain.step(gradient(index)))
        assert lane.t == plain.t == 20 and lane.last_applied_t == 20
        assert np.array_equal(lane.params(), plain.params())
        lane_path, plain_path = f"/v1/sessions/{lane.id}", f"/v1/sessions/{plain.id}"
        assert not [sent for sent in httpx_sends if lane_path in sent]
        assert len([sent for sent in httpx_sends if plain_path in sent]) == 21


def test_an_error_answer_raises_as_through_httpx(service_url: str) -> None:
    with adamhub.Client(service_url, max_retries=0) as client:
        session = client.create_session(size=SIZE)
        client.session(session.id).delete()
        with pytest.raises(adamhub.NotFoundError) as raised:
            session.step(gradient(0))
    error = raised.value
    assert error.status_code == 404
    assert (error.type or "").endswith("/session-not-found")
    assert error.response.request.url.path == f"/v1/sessions/{session.id}/step"


def test_lost_answers_are_sent_again_and_applied_once(service_url: str) -> None:
    proxy = DroppingProxy(int(service_url.rsplit(":", 1)[1]), drop_ratio=0.3, seed=3)
    try:
        with adamhub.Client(
            proxy.base_url, max_retries=8, initial_retry_delay=0.01, max_retry_delay=0.1
        ) as client:
            session = client.create_session(size=SIZE, optimizer={"lr": 0.01})
            applied = []
            for index in range(40):
                session.step(gradient(index))
                applied.append(session.last_applied_t)
    finally:
        proxy.close()
    assert proxy.dropped > 0
    assert applied == list(range(1, 41))
    with adamhub.Client(service_url, http_client=httpx.Client()) as client:
        replay = client.create_session(size=SIZE, optimizer={"lr": 0.01})
        for index in range(40):
            replay.step(gradient(index))
        assert np.array_equal(client.session(session.id).params(), replay.params())


def test_threads_share_one_client(service_url: str) -> None:
    with adamhub.Client(service_url) as client:
        session = client.create_session(size=SIZE)
        failures: list[BaseException] = []

        def work(seed: int) -> None:
            mine = client.session(session.id)
            try:
                for index in range(15):
                    mine.step(gradient(seed * 100 + index))
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        session.refresh()
        assert session.t == 60


def test_a_timeout_is_one_attempt_of_the_retries() -> None:
    """A service that takes the request and never answers: with no retries, one
    request reaches it and the SDK raises its timeout error."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    try:
        with adamhub.Client(f"http://127.0.0.1:{port}", timeout=0.3, max_retries=0) as client:
            spec = RequestSpec("GET", "/v1/sessions/s/params", direct=True)
            with pytest.raises(adamhub.APITimeoutError):
                client.request(spec)
        assert len(accepted) == 1
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


def test_the_lane_is_off_where_httpx_must_send(monkeypatch: pytest.MonkeyPatch) -> None:
    timeout = httpx.Timeout(5.0)
    assert DirectLane.serving("http://127.0.0.1:8000", timeout, own_http=True) is not None
    assert DirectLane.serving("http://127.0.0.1:8000", timeout, own_http=False) is None
    assert DirectLane.serving("https://adamhub.example", timeout, own_http=True) is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert DirectLane.serving("http://adamhub.example", timeout, own_http=True) is None
    monkeypatch.setenv("NO_PROXY", "adamhub.example")
    assert DirectLane.serving("http://adamhub.example", timeout, own_http=True) is not None
