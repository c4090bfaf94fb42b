"""The sync client's direct lane: steps and parameter reads over a socket of its own, with
the answers, errors, retries and exactly-once of the httpx path."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

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


@contextlib.contextmanager
def lane_and_httpx(
    service_url: str, size: int
) -> Iterator[tuple[adamhub.Session, adamhub.Session]]:
    """Two sessions alike: one stepped over the lane, one through an injected httpx."""
    with (
        adamhub.Client(service_url) as client,
        adamhub.Client(service_url, http_client=httpx.Client()) as through_httpx,
    ):
        yield (
            client.create_session(size=size, optimizer={"lr": 0.01}),
            through_httpx.create_session(size=size, optimizer={"lr": 0.01}),
        )


def test_steps_and_reads_go_over_the_lane_with_the_same_bits(
    service_url: str, httpx_sends: list[str]
) -> None:
    with lane_and_httpx(service_url, SIZE) as (lane, plain):
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


def test_a_large_step_goes_and_comes_back_whole(service_url: str, httpx_sends: list[str]) -> None:
    size = 300_000  # 1.2 MB each way: sent beside the head, read past the read buffer
    with lane_and_httpx(service_url, size) as (lane, plain):
        httpx_sends.clear()
        for seed in range(3):
            big = np.random.default_rng(seed).normal(size=size).astype(np.float32)
            answered = lane.step(big)
            assert np.array_equal(answered, plain.step(big))
            # Read into a buffer of its own: the user's to change, without a copy made.
            assert answered.flags.writeable and answered.dtype == np.float32
            answered += 1.0
        assert not [sent for sent in httpx_sends if lane.id in sent]


class OneConnectionServer:
    """A listener that answers each request on its first connection with the next of
    ``answers``, each a list of pieces written with a pause between them."""

    def __init__(self, answers: list[list[bytes]]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self._answers = answers
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            for pieces in self._answers:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += connection.recv(65536)
                self.requests.append(request)
                for piece in pieces:
                    connection.sendall(piece)
                    time.sleep(0.05)
            time.sleep(0.2)

    def close(self) -> None:
        # A connection of its own wakes an accept still waiting (closing does not).
        with contextlib.suppress(OSError):
            socket.create_connection(self.listener.getsockname(), timeout=1).close()
        self._thread.join(5)
        self.listener.close()


def lane_get(lane: DirectLane) -> httpx.Response | None:
    return lane.send(RequestSpec("GET", "/v1/sessions/s/params", direct=True), {})


def test_chunked_answers_and_heads_split_across_reads_are_read_whole() -> None:
    chunked = [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nadamhub-t: 7\r\n\r\n",
        b"5\r\nhello\r\n",
        b"6\r\n world\r\n0\r\n\r\n",
    ]
    split_head = [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r", b"\nabc", b"de"]
    server = OneConnectionServer([chunked, split_head])
    lane = DirectLane(server.base_url, 5.0)
    try:
        first = lane_get(lane)
        assert first is not None
        assert first.content == b"hello world" and first.headers["adamhub-t"] == "7"
        second = lane_get(lane)  # on the same kept-alive connection
        assert second is not None and second.content == b"abcde"
        assert len(server.requests) == 2
        assert server.requests[0].startswith(b"GET /v1/sessions/s/params HTTP/1.1\r\n")
    finally:
        lane.close()
        server.close()


def test_an_answer_cut_short_is_a_read_error() -> None:
    server = OneConnectionServer([[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"]])
    lane = DirectLane(server.base_url, 5.0)
    try:
        with pytest.raises(httpx.ReadError):
            lane_get(lane)
    finally:
        lane.close()
        server.close()


def test_a_header_it_cannot_send_as_it_is_goes_through_httpx() -> None:
    server = OneConnectionServer([])
    lane = DirectLane(server.base_url, 5.0)
    try:
        spec = RequestSpec("GET", "/v1/sessions/s/params", direct=True)
        assert lane.send(spec, {"Adamhub-Worker": "a\r\nInjected: 1"}) is None
        assert lane.send(spec, {"Adamhub-Worker": "snow ☃"}) is None
        assert server.requests == []
    finally:
        lane.close()
        server.close()


def test_the_host_header_names_the_service_as_its_url_does() -> None:
    server = OneConnectionServer([[b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]])
    port = server.base_url.rsplit(":", 1)[1]
    lane = DirectLane(server.base_url, 5.0)
    try:
        answer = lane_get(lane)
        assert answer is not None and answer.status_code == 200 and answer.content == b""
        assert f"\r\nHost: 127.0.0.1:{port}\r\n".encode() in server.requests[0]
    finally:
        lane.close()
        server.close()
    assert DirectLane("http://[::1]:8000/base", 5.0)._host_header == "[::1]:8000"
