"""A replica of several worker processes (``--workers 2``): the connections of a session
are handed to the process that owns it (cli/handoff.py), and everything sent on them is
answered as by one process."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from adamhub_service.optim import AdamConfig, adam_step, init_state
from adamhub_service.testing import ServiceProcess, read_answers

BINARY = "application/octet-stream"


@pytest.fixture
def replica(redis_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        "--redis-url", redis_url, "--workers", "2", log_path=tmp_path / "service.log"
    ).start()
    yield process
    assert process.stop() == 0


def create(base_url: str, size: int) -> str:
    response = httpx.post(f"{base_url}/v1/sessions", json={"size": size})
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    return session_id


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def post(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {BINARY}\r\n"
        f"Accept: {BINARY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def holders(
    replica: ServiceProcess, connections: list[socket.socket]
) -> list[tuple[psutil.Process, int]]:
    """Each process of the replica, and how many of ``connections`` it holds."""
    assert replica.process is not None
    ports = {connection.getsockname()[1] for connection in connections}
    return [
        (
            child,
            sum(
                1
                for held in child.net_connections("tcp")
                if held.raddr and held.raddr.port in ports
            ),
        )
        for child in psutil.Process(replica.process.pid).children()
    ]


def holder(replica: ServiceProcess, connection: socket.socket) -> psutil.Process:
    """The process that holds ``connection``: the only one, once the process that
    handed it over has closed its descriptor (a moment after the owner took it)."""
    deadline = time.monotonic() + 5
    while True:
        held = [child for child, count in holders(replica, [connection]) if count]
        if len(held) == 1 or time.monotonic() > deadline:
            [only] = held
            return only
        time.sleep(0.01)


def test_the_connections_of_a_session_meet_in_the_process_that_owns_it(
    replica: ServiceProcess,
) -> None:
    """Whichever process accepts a connection, a session's connections end up held by
    one process (its owner), and every request on them is answered in order: a step
    whose head and first bytes of body came before the hand-over, requests pipelined
    behind it, reads."""
    size = 300_000
    sessions = [create(replica.base_url, size) for _ in range(3)]
    values = np.random.default_rng(1).standard_normal(size).astype(np.float32)
    opened: dict[str, list[socket.socket]] = {}
    try:
        for session in sessions:
            for _ in range(6):
                connection = socket.create_connection(("127.0.0.1", replica.port), timeout=30)
                opened.setdefault(session, []).append(connection)
                # A step, with a read pipelined right behind it, in one write.
                path = f"/v1/sessions/{session}"
                connection.sendall(post(f"{path}/step", values.tobytes()) + get(path))
                (step_head, body), (read_head, _) = read_answers(connection, 2)
                assert step_head.startswith(b"HTTP/1.1 200"), step_head
                assert len(body) == values.nbytes and read_head.startswith(b"HTTP/1.1 200")
        for session, connections in opened.items():
            # The next request of a connection goes where the owner is known by then.
            for connection in connections:
                connection.sendall(get(f"/v1/sessions/{session}"))
                [(head, document)] = read_answers(connection, 1)
                assert head.startswith(b"HTTP/1.1 200") and b'"t":6' in document
            owners = {holder(replica, connection).pid for connection in connections}
            assert len(owners) == 1, f"{session}'s connections are held by {owners}"
    finally:
        for connections in opened.values():
            for connection in connections:
                connection.close()
    # Six steps of the same gradient from each session's six connections: the state of
    # six steps, to the bit.
    config = AdamConfig()
    state = init_state(np.zeros(size, np.float32), config)
    for _ in range(6):
        state = adam_step(state, values, config)
    for session in sessions:
        answer = httpx.get(
            f"{replica.base_url}/v1/sessions/{session}/params", headers={"Accept": BINARY}
        )
        assert answer.status_code == 200
        assert np.frombuffer(answer.content, np.float32).tobytes() == state.params.tobytes()


def test_the_sessions_of_a_worker_process_killed_are_served_by_the_others(
    replica: ServiceProcess,
) -> None:
    """kill -9 of the process that owns a session: new connections for it are served at
    once by the process left (a hand-over to the dead one fails, and it is no longer
    listed), and its steps go on from the state acknowledged."""
    session = create(replica.base_url, 1000)
    values = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    with socket.create_connection(("127.0.0.1", replica.port), timeout=30) as connection:
        connection.sendall(post(f"/v1/sessions/{session}/step", values.tobytes()))
        [(head, _)] = read_answers(connection, 1)
        assert head.startswith(b"HTTP/1.1 200")
        owner = holder(replica, connection)
    owner.kill()
    owner.wait(10)
    for _ in range(6):  # each accepted by whichever process is there
        with socket.create_connection(("127.0.0.1", replica.port), timeout=30) as connection:
            connection.sendall(post(f"/v1/sessions/{session}/step", values.tobytes()))
            [(head, _)] = read_answers(connection, 1)
            assert head.startswith(b"HTTP/1.1 200"), head
    config = AdamConfig()
    state = init_state(np.zeros(1000, np.float32), config)
    for _ in range(7):
        state = adam_step(state, values, config)
    answer = httpx.get(
        f"{replica.base_url}/v1/sessions/{session}/params", headers={"Accept": BINARY}
    )
    assert answer.headers["adamhub-step"] == "7"
    assert np.frombuffer(answer.content, np.float32).tobytes() == state.params.tobytes()


def test_a_connection_carrying_several_sessions_moves_once_at_most(
    replica: ServiceProcess,
) -> None:
    """A connection that carries requests for sessions of different owners (as a
    proxy's does) is not passed back and forth: it moves once at most, and every
    request on it is answered."""
    owned: dict[int, str] = {}
    while len(owned) < 2:  # a session owned by each process
        session = create(replica.base_url, 3)
        with socket.create_connection(("127.0.0.1", replica.port), timeout=30) as connection:
            connection.sendall(get(f"/v1/sessions/{session}"))
            read_answers(connection, 1)
            owner = holder(replica, connection).pid
        owned.setdefault(owner, session)
    first, second = owned.values()
    seen = []
    with socket.create_connection(("127.0.0.1", replica.port), timeout=30) as connection:
        for session in [first, second] * 4:
            connection.sendall(get(f"/v1/sessions/{session}"))
            [(head, document)] = read_answers(connection, 1)
            assert head.startswith(b"HTTP/1.1 200") and session.encode() in document
            seen.append(holder(replica, connection).pid)
    moves = sum(1 for before, after in itertools.pairwise(seen) if before != after)
    assert moves <= 1, f"the connection moved {moves} times: {seen}"
