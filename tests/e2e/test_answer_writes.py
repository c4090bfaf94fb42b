"""An answer's head and body leave the service in one write, against the real process."""

from __future__ import annotations

import select
import socket

import httpx
import numpy as np

from adamhub_service.testing import content_length


def test_an_answer_comes_whole_in_the_first_read(service_url: str) -> None:
    # Written as two sends, the head wakes a waiting client alone: its first read holds
    # the head and not the body, most times out of twenty.
    sid = httpx.post(f"{service_url}/v1/sessions", json={"size": 1000}).json()["id"]
    gradient = np.ones(1000, np.float32).tobytes()
    head = (
        f"POST /v1/sessions/{sid}/step HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/octet-stream\r\nAccept: application/octet-stream\r\n"
        f"Content-Length: {len(gradient)}\r\n\r\n"
    ).encode()
    port = int(service_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(20):
            sock.sendall(head + gradient)
            assert select.select([sock], [], [], 10)[0]
            first = sock.recv(1 << 20)
            answer_head, _, body = first.partition(b"\r\n\r\n")
            assert answer_head.startswith(b"HTTP/1.1 200 ")
            assert len(body) == content_length(answer_head) == 4000


def test_an_interim_answer_is_not_held_back(service_url: str) -> None:
    # A client that asks to be told to go on sends no body until it is told.
    sid = httpx.post(f"{service_url}/v1/sessions", json={"size": 3}).json()["id"]
    body = b'{"gradient": [1.0, 2.0, 3.0]}'
    head = (
        f"POST /v1/sessions/{sid}/step HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nExpect: 100-continue\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    port = int(service_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(1 << 16) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < (
            content_length(answer.partition(b"\r\n\r\n")[0])
        ):
            answer += sock.recv(1 << 16)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b'"t":1' in answer
