"""Connections handed between worker processes (cli/handoff.py), with real sockets."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from adamhub_service.cli.handoff import Peers, session_of


@pytest.mark.parametrize(
    ("path", "session"),
    [
        (b"/v1/sessions/s_1/step", "s_1"),
        (b"/v1/sessions/s_1?wait=3", "s_1"),
        (b"/v1/sessions/s_1", "s_1"),
        (b"/v1/sessions", None),
        (b"/v1/sessions/", None),
        (b"/healthz", None),
    ],
)
def test_the_session_a_path_names(path: bytes, session: str | None) -> None:
    assert session_of(path) == session


def test_a_connection_handed_over_is_the_same_connection_with_its_bytes(tmp_path: Path) -> None:
    """The peer that takes a connection gets the bytes read of it and the socket itself:
    what the client sends next, and what the peer answers, cross that socket."""
    client, server_end = socket.socketpair()
    adopted: list[tuple[socket.socket, bytes]] = []

    async def scenario() -> None:
        giver = Peers(tmp_path, lambda connection, received: None, name="a")
        taker = Peers(
            tmp_path, lambda connection, received: adopted.append((connection, received)), name="b"
        )
        try:
            # Each owns some sessions; every peer agrees on which.
            owners = {giver.owner(f"s_{index}") for index in range(20)}
            assert owners == {"a.sock", "b.sock"}
            assert all(giver.owner(f"s_{i}") == taker.owner(f"s_{i}") for i in range(20))
            taken = await asyncio.to_thread(
                giver.hand_over, "b.sock", server_end.fileno(), b"GET / HTTP/1.1\r\n"
            )
            assert taken
        finally:
            giver.close()
            taker.close()

    asyncio.run(scenario())
    server_end.close()  # the giver lets go of its descriptor; the connection stays
    [(connection, received)] = adopted
    assert received == b"GET / HTTP/1.1\r\n"
    with connection:
        connection.setblocking(True)
        client.sendall(b"next")
        assert connection.recv(4) == b"next"
        connection.sendall(b"answer")
        assert client.recv(6) == b"answer"
    client.close()


def test_a_peer_that_died_is_refused_and_left_out_of_the_listing(tmp_path: Path) -> None:
    """A socket file nobody listens on (its process was killed): the hand-over fails,
    the caller keeps the connection, and the peer is no longer an owner."""
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()  # the file stays, as after kill -9
    client, server_end = socket.socketpair()

    async def scenario() -> None:
        alive = Peers(tmp_path, lambda connection, received: None, name="alive")
        try:
            sessions = [f"s_{index}" for index in range(20)]
            assert {alive.owner(session) for session in sessions} == {"alive.sock", "dead.sock"}
            taken = await asyncio.to_thread(alive.hand_over, "dead.sock", server_end.fileno(), b"x")
            assert not taken
            assert {alive.owner(session) for session in sessions} == {"alive.sock"}
        finally:
            alive.close()

    asyncio.run(scenario())
    # The connection is still the caller's.
    client.sendall(b"still")
    assert server_end.recv(5) == b"still"
    client.close()
    server_end.close()
