"""Limits and honest failures against the real service process and a real Redis."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from adamhub_service.testing import ServiceProcess, StoreServer, content_length, read_answers

BINARY = "application/octet-stream"
ERRORS = "https://adamhub.dev/errors/"


def rss_bytes(pid: int) -> int:
    """The resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def debug_store() -> Iterator[StoreServer]:
    """A store of its own whose DEBUG SLEEP can stall it without stalling other tests."""
    server = StoreServer("--enable-debug-command", "yes").start()
    yield server
    server.cleanup()


def start(store_url: str, tmp_path: Path, **env: str) -> ServiceProcess:
    variables = {f"ADAMHUB_{name.upper()}": value for name, value in env.items()}
    return ServiceProcess(
        "--redis-url", store_url, env=variables, log_path=tmp_path / "service.log"
    ).start()


def post_head(path: str, length: str) -> bytes:
    """The head of a binary POST, with ``length`` (a Content-Length or Transfer-Encoding)."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {BINARY}\r\n{length}\r\n\r\n"
    ).encode()


def raw_request(port: int, head: bytes, body: bytes = b"", *, timeout: float = 10) -> bytes:
    """Send bytes on a fresh connection and read the whole answer until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def send_until_answered(sock: socket.socket, piece: bytes, *, limit: int) -> tuple[bytes, int]:
    """Send ``piece`` again and again until the peer answers or hangs up (or ``limit``);
    return the answer (b"" when none came) and the bytes sent."""
    sent = 0
    while sent < limit:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        try:
            sock.sendall(piece)
        except OSError:
            break
        sent += len(piece)
    answer = b""
    try:
        # The whole answer: its head, then as many bytes as its Content-Length says.
        while part := sock.recv(65536):
            answer += part
            head, found, body = answer.partition(b"\r\n\r\n")
            if found and len(body) >= content_length(head):
                break
    except OSError:
        pass
    return answer, sent


def create(base_url: str, size: int = 3) -> str:
    response = httpx.post(f"{base_url}/v1/sessions", json={"size": size})
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    return session_id


def test_a_body_of_the_wrong_length_is_refused_before_it_is_read(
    store_url: str, tmp_path: Path
) -> None:
    service = start(store_url, tmp_path)
    try:
        assert service.process is not None
        sid = create(service.base_url)
        path = f"/v1/sessions/{sid}/step"
        # A 900 MB Content-Length to a 3-element session: answered at once, nothing read.
        head = post_head(path, "Content-Length: 900000000")
        before = rss_bytes(service.process.pid)
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            sock.sendall(head)
            answer, _ = send_until_answered(sock, b"\0" * 65536, limit=900 << 20)
        assert answer.startswith(b"HTTP/1.1 422"), answer[:200]
        assert b"wrong-size" in answer and b"connection: close" in answer.lower()
        assert time.monotonic() - began < 2
        # A chunked body is read into the session's size and refused once it passes it.
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            sock.sendall(post_head(path, "Transfer-Encoding: chunked"))
            piece = b"100000\r\n" + b"\0" * 0x100000 + b"\r\n"  # 1 MiB chunks
            answer_bytes, sent = send_until_answered(sock, piece, limit=900 << 20)
        assert sent < 64 << 20, f"the service read {sent} bytes of a body for 12"
        assert answer_bytes.startswith(b"HTTP/1.1 422") or answer_bytes == b""
        grown = rss_bytes(service.process.pid) - before
        assert grown < 50 << 20, f"RSS grew by {grown >> 20} MiB"
    finally:
        service.stop()


def test_a_stalled_body_is_408_and_the_connection_closed(store_url: str, tmp_path: Path) -> None:
    service = start(store_url, tmp_path, body_timeout_seconds="1")
    try:
        sid = create(service.base_url)
        head = post_head(f"/v1/sessions/{sid}/step", "Content-Length: 12")
        began = time.monotonic()
        answer = raw_request(service.port, head, b"\0" * 4)
        waited = time.monotonic() - began
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request-timeout" in answer and b"connection: close" in answer.lower()
        assert 0.9 < waited < 3
    finally:
        service.stop()


def test_a_body_read_straight_into_place_arrives_whole_however_it_is_sent(
    store_url: str, tmp_path: Path
) -> None:
    """The protocol reads a body into its vector as it arrives (cli/protocol.py): in
    pieces slower than the stall timeout in all but each gap, chunked, after a 100
    Continue, or large; each step applies the body's bytes."""
    service = start(store_url, tmp_path, body_timeout_seconds="1")
    try:
        sid = create(service.base_url)
        path = f"/v1/sessions/{sid}/step"
        gradient = np.array([1.0, -2.0, 3.0], np.float32).tobytes()
        expected_t = 0

        def stepped(answer: bytes) -> None:
            nonlocal expected_t
            expected_t += 1
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
            assert f'"t":{expected_t}'.encode() in answer, answer[-300:]

        close = "Connection: close\r\n"
        # Four bytes every 0.6 s: 1.8 s in all against a 1 s stall timeout.
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            sock.sendall(post_head(path, close + "Content-Length: 12"))
            for start_byte in range(0, 12, 4):
                time.sleep(0.6)
                sock.sendall(gradient[start_byte : start_byte + 4])
            stepped(b"".join(iter(lambda: sock.recv(65536), b"")))
        # Chunked, in two chunks.
        chunked = b"5\r\n" + gradient[:5] + b"\r\n7\r\n" + gradient[5:] + b"\r\n0\r\n\r\n"
        stepped(
            raw_request(
                service.port, post_head(path, close + "Transfer-Encoding: chunked"), chunked
            )
        )
        # After 100 Continue.
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            sock.sendall(post_head(path, close + "Expect: 100-continue\r\nContent-Length: 12"))
            assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(gradient)
            stepped(b"".join(iter(lambda: sock.recv(65536), b"")))
        # 4 MB in many pieces, against the same gradient as JSON (read as messages):
        # the same parameters, to the bit.
        values = np.random.default_rng(3).standard_normal(1_000_000).astype(np.float32)
        answers = []
        for body, content_type in ((values.tobytes(), BINARY), (None, "application/json")):
            created = httpx.post(f"{service.base_url}/v1/sessions", json={"size": values.size})
            step = f"{service.base_url}/v1/sessions/{created.json()['id']}/step"
            answer = httpx.post(
                step,
                content=body,
                json=None if body else {"gradient": values.tolist()},
                headers={"Content-Type": content_type, "Accept": BINARY},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            answers.append(answer.content)
        assert len(answers[0]) == values.nbytes and answers[0] == answers[1]
    finally:
        service.stop()


def test_a_body_read_from_the_socket_into_place_leaves_the_connection_in_step(
    store_url: str, tmp_path: Path
) -> None:
    """A large body of known length is read from the socket straight into its vector,
    never past its end: requests sent right behind it on the same connection are
    parsed and answered in order, and the vector holds the same bits as one parsed from
    chunks."""
    service = start(store_url, tmp_path)
    try:
        big, small = create(service.base_url, 1_000_000), create(service.base_url)
        twin = create(service.base_url, 1_000_000)
        values = np.random.default_rng(5).standard_normal(1_000_000).astype(np.float32)
        accept = "Accept: application/octet-stream\r\n"
        small_gradient = np.array([1.0, 2.0, 3.0], np.float32).tobytes()
        with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
            sock.sendall(
                post_head(f"/v1/sessions/{big}/step", accept + f"Content-Length: {values.nbytes}")
                + values.tobytes()
                + post_head(f"/v1/sessions/{small}/step", "Content-Length: 12")
                + small_gradient
                + f"GET /v1/sessions/{small} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            )
            big_answer, small_answer, read_answer = read_answers(sock, 3)
            # The connection is still good for another large body.
            sock.sendall(
                post_head(f"/v1/sessions/{big}/step", accept + f"Content-Length: {values.nbytes}")
                + values.tobytes()
            )
            [(again_head, _)] = read_answers(sock, 1)
        (big_head, big_body), (small_head, small_body) = big_answer, small_answer
        read_head, read_body = read_answer
        assert big_head.startswith(b"HTTP/1.1 200") and b"adamhub-step: 1" in big_head.lower()
        assert small_head.startswith(b"HTTP/1.1 200") and b'"t":1' in small_body
        assert read_head.startswith(b"HTTP/1.1 200") and b'"t":1' in read_body
        assert again_head.startswith(b"HTTP/1.1 200") and b"adamhub-step: 2" in again_head.lower()
        # The same gradient, chunked (parsed piece by piece), to a twin: the same bits.
        raw = values.tobytes()
        pieces = [raw[start : start + 65536] for start in range(0, len(raw), 65536)]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
        answer = raw_request(
            service.port,
            post_head(
                f"/v1/sessions/{twin}/step",
                accept + "Connection: close\r\nTransfer-Encoding: chunked",
            ),
            chunked + b"0\r\n\r\n",
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == big_body
    finally:
        service.stop()


def test_a_client_gone_halfway_through_a_body_frees_its_budget_and_changes_nothing(
    store_url: str, tmp_path: Path
) -> None:
    """A body being read from the socket into place whose client hangs up: the step is
    not applied, the memory it held is free for the next, and the service goes on."""
    service = start(store_url, tmp_path, max_inflight_bytes="1000", overload_wait_seconds="0.3")
    try:
        sid = create(service.base_url, size=100)
        path = f"/v1/sessions/{sid}/step"
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            sock.sendall(post_head(path, "Content-Length: 400") + b"\0" * 100)
            time.sleep(0.3)
            sock.sendall(b"\0" * 100)
            time.sleep(0.2)
        gradient = np.ones(100, np.float32).tobytes()

        def step() -> httpx.Response:
            return httpx.post(
                f"{service.base_url}{path}", content=gradient, headers={"Content-Type": BINARY}
            )

        deadline = time.monotonic() + 5
        while (response := step()).status_code == 503:
            assert time.monotonic() < deadline, "the budget was not given back"
        assert response.status_code == 200, response.text
        assert response.json()["t"] == 1
    finally:
        service.stop()


def test_request_heads_over_64_kib_are_431(store_url: str, tmp_path: Path) -> None:
    service = start(store_url, tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            answer, _ = send_until_answered(sock, b"a" * 16384, limit=8 << 20)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b"headers-too-large" in answer
        ok = raw_request(
            service.port,
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Ok: " + b"a" * 8000 + b"\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert ok.startswith(b"HTTP/1.1 200")
    finally:
        service.stop()


def test_over_the_inflight_budget_is_503_overloaded(store_url: str, tmp_path: Path) -> None:
    service = start(store_url, tmp_path, max_inflight_bytes="1000", overload_wait_seconds="0.3")
    try:
        sid = create(service.base_url, size=100)
        # One step holds the budget while its body trickles in ...
        holder = socket.create_connection(("127.0.0.1", service.port))
        holder.sendall(post_head(f"/v1/sessions/{sid}/step", "Content-Length: 400") + b"\0" * 100)
        time.sleep(0.3)
        # ... so another is refused after waiting, before its body is read.
        response = httpx.post(
            f"{service.base_url}/v1/sessions/{sid}/step",
            content=np.ones(100, np.float32).tobytes(),
            headers={"Content-Type": BINARY},
        )
        assert response.status_code == 503, response.text
        assert response.json()["type"] == ERRORS + "overloaded"
        assert response.headers["retry-after"] == "1"
        holder.sendall(b"\0" * 300)
        assert holder.recv(12) == b"HTTP/1.1 200"
        holder.close()
        # With the budget free again, the same step goes through.
        response = httpx.post(
            f"{service.base_url}/v1/sessions/{sid}/step",
            content=np.ones(100, np.float32).tobytes(),
            headers={"Content-Type": BINARY},
        )
        assert response.status_code == 200
    finally:
        service.stop()


def test_a_write_the_store_stalls_on_is_outcome_unknown_and_retried_once(
    debug_store: StoreServer, tmp_path: Path
) -> None:
    service = start(debug_store.url, tmp_path, redis_timeout_seconds="1")
    store = redis.Redis.from_url(debug_store.url, socket_timeout=30)
    try:
        sid = create(service.base_url)
        url = f"{service.base_url}/v1/sessions/{sid}/step"
        headers = {"Idempotency-Key": "stalled-1"}
        stall = threading.Thread(target=store.execute_command, args=("DEBUG", "SLEEP", "3"))
        stall.start()
        time.sleep(0.2)
        first = httpx.post(url, json={"gradient": [1, 2, 3]}, headers=headers, timeout=30)
        assert first.status_code == 503, first.text
        assert first.json()["type"] == ERRORS + "outcome-unknown"
        assert "retry-after" in first.headers
        stall.join()
        retry = httpx.post(url, json={"gradient": [1, 2, 3]}, headers=headers, timeout=30)
        assert retry.status_code == 200
        assert retry.json()["applied_t"] == 1 and retry.json()["t"] == 1  # applied once
        # A read during a stall changed nothing, and says so.
        stall = threading.Thread(target=store.execute_command, args=("DEBUG", "SLEEP", "2"))
        stall.start()
        time.sleep(0.2)
        read = httpx.get(f"{service.base_url}/v1/sessions/{sid}", timeout=30)
        assert read.status_code == 503 and read.json()["type"] == ERRORS + "store-unavailable"
        stall.join()
    finally:
        store.close()
        service.stop()


def test_steps_queued_on_a_stalled_store_all_answer_within_its_timeout(
    debug_store: StoreServer, tmp_path: Path
) -> None:
    service = start(debug_store.url, tmp_path, redis_timeout_seconds="1")
    store = redis.Redis.from_url(debug_store.url, socket_timeout=30)
    try:
        sid = create(service.base_url)
        stall = threading.Thread(target=store.execute_command, args=("DEBUG", "SLEEP", "6"))
        stall.start()
        time.sleep(0.2)
        answered: list[tuple[int, float]] = []

        def step(index: int) -> None:
            began = time.monotonic()
            response = httpx.post(
                f"{service.base_url}/v1/sessions/{sid}/step",
                json={"gradient": [1, 2, 3]},
                headers={"Idempotency-Key": f"q{index}"},
                timeout=30,
            )
            answered.append((response.status_code, time.monotonic() - began))

        workers = [threading.Thread(target=step, args=(i,)) for i in range(10)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        stall.join()
        assert [status for status, _ in answered] == [503] * 10
        slowest = max(seconds for _, seconds in answered)
        assert slowest < 1 + 1, f"the last queued step answered after {slowest:.1f} s"
    finally:
        store.close()
        service.stop()
