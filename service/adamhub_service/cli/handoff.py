"""Connections handed between the worker processes of one replica, so that the requests
of a session meet in one process.

With ``--workers N`` the processes share one listening socket, and a connection goes to
whichever accepts it first. The requests of one session, from several workers, then
reach several processes: each catches up on the steps the others applied (it reads them
back from the store), and a round's contributions that reach a process other than the
round's holder are stored for it and read back. Measured on 2 cores, 4 workers, one
session: plain steps 1.2–1.45× and rounds 2.5× slower through two processes than
through one.

So each process is a *peer*: it listens on a Unix socket in a folder the replica's
processes share (``PEERS_ENV``), and a session has one *owner* among the peers
listed there (rendezvous hashing on the session id). When a request names a session
another peer owns, the process passes the connection's socket to that peer
(``SCM_RIGHTS``) with the bytes it has read of the request, and lets go of its own
descriptor; the owner serves the connection from then on, as if it had accepted it.
Keep-alive clients (the SDK) thus send their later requests straight to the owner.

Only a request whose bytes are all at hand from its first goes: the first of a
connection, or one after an answer with nothing read beyond the request answered (a
client that waits for each answer, as the SDK does); never a pipelined one, nor over
TLS. A connection moves once at most: one handed over stays where it went, so that a
connection carrying the requests of several sessions (a proxy's) is not passed back
and forth. A process becomes a peer with its first connection (the connections handed
to it are served as that one is), so a connection may stay with a process that did not
yet list the owner, until its next request. Whenever a hand-over fails, the process
serves the connection itself. Ownership is a matter of speed, never of correctness:
every process serves every session, as every replica does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

# The folder the worker processes of one replica share (set by ``serve``).
PEERS_ENV = "ADAMHUB_WORKER_PEERS_DIR"
# A connection's bytes read before it is handed over: its first request's head and what
# came with it (uvloop reads at most 256 KiB at a time).
MAX_HANDED_BYTES = 1 << 20
# The longest a listing of the peers is trusted.
_LISTING_SECONDS = 1.0
# A hand-over is a local exchange of a few bytes; one that takes longer is given up.
_EXCHANGE_SECONDS = 1.0
_SUFFIX = ".sock"
_HEADER = 4

logger = logging.getLogger(__name__)

Adopt = Callable[[socket.socket, bytes], None]


def session_of(path: bytes) -> str | None:
    """The session id a request path names (``/v1/sessions/<id>…``), if any."""
    prefix = b"/v1/sessions/"
    if not path.startswith(prefix):
        return None
    session = path[len(prefix) :].split(b"/", 1)[0].split(b"?", 1)[0]
    return session.decode("ascii", "replace") if session else None


class Peers:
    """This process among the worker processes of its replica."""

    def __init__(self, folder: Path, adopt: Adopt, *, name: str | None = None) -> None:
        """Listen in ``folder`` under ``name`` (this process's id); ``adopt`` is called,
        in the running loop, with each connection handed here and the bytes read of
        it."""
        self._folder = folder
        self._adopt = adopt
        self.name = f"{name or os.getpid()}{_SUFFIX}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = folder / self.name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a process of the same pid that died
        self._listener.bind(str(path))
        self._listener.listen(64)
        self._listener.setblocking(False)
        asyncio.get_running_loop().add_reader(self._listener.fileno(), self._on_connection)
        self._names: list[str] = []
        self._listed_changed, self._listed_at = -1, -_LISTING_SECONDS

    def owner(self, session_id: str) -> str:
        """The peer that owns ``session_id`` (this one's name when it is this one)."""
        # The folder changes when a peer comes or goes: listed again then, and every
        # second (a timestamp's tick may hide a change that followed the last listing).
        changed, now = os.stat(self._folder).st_mtime_ns, time.monotonic()
        if changed != self._listed_changed or now - self._listed_at >= _LISTING_SECONDS:
            self._names = sorted(
                entry.name for entry in os.scandir(self._folder) if entry.name.endswith(_SUFFIX)
            )
            self._listed_changed, self._listed_at = changed, now
        return max(self._names or [self.name], key=lambda name: _weight(name, session_id))

    def hand_over(self, peer: str, connection: int, received: bytes) -> bool:
        """Pass the socket ``connection`` and the bytes read of it to ``peer``: whether
        it went (then it is the peer's, and the caller only closes its descriptor; when
        not, the caller keeps serving it).

        The socket goes first, alone: once it is sent, the connection is the peer's
        whatever follows, so that never two processes serve it. Should the bytes not
        follow (the peer died), the peer, or the kernel with the peer, closes it, and
        its client sends the request again."""
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            channel.settimeout(_EXCHANGE_SECONDS)
            channel.connect(str(self._folder / peer))
            header = len(received).to_bytes(_HEADER, "big")
            socket.send_fds(channel, [header], [connection])
        except OSError as exc:
            channel.close()
            logger.debug("could not hand a connection to %s: %s", peer, exc)
            if isinstance(exc, ConnectionRefusedError):
                # Nobody listens there: a peer that died. Out of the listing.
                with contextlib.suppress(FileNotFoundError):
                    (self._folder / peer).unlink()
            return False
        with channel:
            try:
                channel.sendall(received)
            except OSError as exc:
                logger.debug("a connection handed to %s lost its bytes: %s", peer, exc)
        return True

    def _on_connection(self) -> None:
        try:
            channel, _ = self._listener.accept()
        except BlockingIOError:
            return
        with channel:
            channel.settimeout(_EXCHANGE_SECONDS)
            try:
                connection, received = _receive(channel)
            except (OSError, ValueError) as exc:
                logger.debug("a connection handed over did not arrive: %s", exc)
                return
        try:
            self._adopt(connection, received)
        except Exception:
            connection.close()
            raise

    def close(self) -> None:
        """Stop taking connections, and leave the listing (again: nothing)."""
        if self._listener.fileno() < 0:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            (self._folder / self.name).unlink()


def _receive(channel: socket.socket) -> tuple[socket.socket, bytes]:
    """A socket handed over on ``channel`` and the bytes read of it so far."""
    header, descriptors, _, _ = socket.recv_fds(channel, _HEADER, 1)
    if not descriptors:
        raise ValueError("no socket came")
    connection = socket.socket(fileno=descriptors[0])
    try:
        while len(header) < _HEADER:
            part = channel.recv(_HEADER - len(header))
            if not part:
                raise ValueError("the header was cut short")
            header += part
        length = int.from_bytes(header, "big")
        if length > MAX_HANDED_BYTES:
            raise ValueError(f"{length} bytes handed over")
        received = bytearray()
        while len(received) < length:
            part = channel.recv(length - len(received))
            if not part:
                raise ValueError("the bytes were cut short")
            received += part
    except BaseException:
        connection.close()
        raise
    connection.setblocking(False)
    return connection, bytes(received)


def _weight(peer: str, session_id: str) -> bytes:
    return hashlib.blake2b(f"{peer}/{session_id}".encode(), digest_size=8).digest()
