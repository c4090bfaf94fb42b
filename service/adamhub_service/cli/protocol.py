"""uvicorn's HTTP protocol with a bound on a request's head, bodies read straight into
place, and connections handed to the worker process that owns their session.

- httptools keeps reading a header of any size; this protocol answers 431 and closes
  the connection as soon as a head passes ``MAX_HEAD_BYTES`` without being complete.
- ASGI hands a body to the app in messages: each piece is appended to a buffer, copied
  out of it into a message, and copied again by the app into its vector, one event-loop
  wake-up per piece. A request's ``DIRECT_BODY`` extension (``api/bodies.py``) lets the
  app give the buffer the body belongs in, and the app wakes once, when the body is
  complete (a 40 MB gradient: 160 pieces).
- A body of a known length (Content-Length, no TLS) is then read from the socket
  straight into that buffer (``_RawBody``, a buffered protocol the transport switches
  to until the body's last byte): the kernel's copy is the only one. Parsed, each piece
  would be copied three times more: into the bytes the event loop hands over, into the
  bytes the parser hands over, and into the buffer. Other bodies (chunked) are parsed,
  each piece copied into the buffer as it comes.
- An answer's head goes out with its body, in one write (``cli/answer_writes.py``).
- With ``--workers N``, a request that names a session another worker process owns
  goes there with its connection, unparsed here (``cli/handoff.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import socket
from pathlib import Path
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from adamhub_service.api.bodies import DIRECT_BODY
from adamhub_service.cli.answer_writes import HeadWithBody
from adamhub_service.cli.handoff import MAX_HANDED_BYTES, PEERS_ENV, Peers, session_of
from adamhub_service.errors import ERROR_TYPE_BASE

MAX_HEAD_BYTES = 64 * 1024

logger = logging.getLogger(__name__)


class _DirectBody:
    """One request's body, read into the app's buffer (``api.bodies.ReadInto``)."""

    def __init__(self, protocol: ServiceProtocol, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        self._cycle = cycle
        self._view = memoryview(bytearray())
        self._filled = 0
        self._last_piece = 0.0

    def owns(self, cycle: RequestResponseCycle | None) -> bool:
        """Whether ``cycle`` (the request being parsed) is this body's request."""
        return cycle is self._cycle

    def take(self, piece: bytes | bytearray) -> None:
        """Copy a piece of the body into place; past the buffer's end, count it only
        and wake the reader (the body is too long)."""
        end = self._filled + len(piece)
        if end <= len(self._view):
            self._view[self._filled : end] = piece
        else:
            self._cycle.message_event.set()
        self._filled = end
        self._last_piece = self._protocol.loop.time()

    async def readinto(self, view: memoryview, stall_seconds: float) -> int | None:
        cycle, protocol = self._cycle, self._protocol
        loop = protocol.loop
        if cycle.waiting_for_100_continue and not cycle.transport.is_closing():
            cycle.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        self._view, self._filled, self._last_piece = view, 0, loop.time()
        # What came before the app asked (a small body: all of it) is in the cycle.
        self.take(cycle.body)
        cycle.body = bytearray()
        protocol.direct = self
        raw = None
        if cycle.more_body and not cycle.disconnected and protocol.reads_raw(cycle, len(view)):
            raw = _RawBody(protocol, self)
        try:
            while cycle.more_body and not cycle.disconnected and self._filled <= len(view):
                # Reading may have paused with the cycle's buffer full.
                protocol.flow.resume_reading()
                cycle.message_event.clear()
                remaining = self._last_piece + stall_seconds - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                try:
                    async with asyncio.timeout(remaining):
                        await cycle.message_event.wait()
                except TimeoutError:
                    continue  # stalled only if no piece came meanwhile
        finally:
            protocol.direct = None
            if raw is not None:
                raw.abandon()  # a body not read to its end is read past, for the next request
        return None if cycle.disconnected else self._filled

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes`` more that a raw read put in place."""
        self._filled += nbytes
        self._last_piece = self._protocol.loop.time()

    def rest(self) -> memoryview:
        """The part of the buffer the body has not filled yet."""
        return self._view[self._filled :]

    def complete(self) -> bool:
        """Whether the buffer holds the whole body."""
        return self._filled >= len(self._view)


class _RawBody(asyncio.BufferedProtocol):
    """The transport's protocol while the rest of a body of known length is read: the
    socket's bytes go straight into the body's buffer, never past its last byte. Then
    the transport goes back to the HTTP protocol, with a new parser for the next
    request (this one never saw the body's bytes, and needs not)."""

    def __init__(self, protocol: ServiceProtocol, body: _DirectBody) -> None:
        self._protocol = protocol
        self._body: _DirectBody | None = body
        # Read past after the reader has gone: the bytes of the body it left.
        self._skip = 0
        self._scratch = memoryview(bytearray(0))
        protocol.transport.set_protocol(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is not None:
            return self._body.rest()
        return self._scratch[: self._skip]

    def buffer_updated(self, nbytes: int) -> None:
        body = self._body
        if body is not None:
            body.advance(nbytes)
            if body.complete():
                self._body = None
                self._protocol.raw_body_read()  # wakes the reader
        else:
            self._skip -= nbytes
            if not self._skip:
                self._protocol.raw_body_read()

    def abandon(self) -> None:
        """The reader is gone (408, cancelled): read what is left of the body into a
        scratch buffer, so that the connection is in step for the next request."""
        body, self._body = self._body, None
        if body is not None:
            self._skip = len(body.rest())
            self._scratch = memoryview(bytearray(min(self._skip, 1 << 16)))

    # Everything else the transport says goes to the HTTP protocol.
    def connection_lost(self, exc: Exception | None) -> None:
        self._body = None
        self._protocol.connection_lost(exc)

    def eof_received(self) -> None:
        self._protocol.eof_received()

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()


class ServiceProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses heads over ``MAX_HEAD_BYTES`` with a 431,
    offers each request the ``DIRECT_BODY`` extension, and hands a connection whose
    request names a session to the worker process that owns it (``cli/handoff.py``)."""

    def __init__(self, *args: Any, received: bytes | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        # The body being read straight into place, while its reader waits.
        self.direct: _DirectBody | None = None
        # A connection handed to this process: the bytes the other one read of it.
        self._adopted = received
        self._peers = _process_peers(*args, **kwargs)
        # A connection moves once at most: one that carries the requests of several
        # sessions (a proxy's, reused for any client) is not passed back and forth.
        self._may_hand_over = received is None and self._peers is not None
        # The bytes read since the first byte of the request being parsed, while they
        # are all of it (None: the request began amid bytes already parsed, or the
        # connection is not to be handed over).
        self._request_chunks: list[bytes] | None = [] if self._may_hand_over else None
        self._request_bytes = 0
        self._in_message = False
        # While the connection is being handed over: the bytes read of it.
        self._handing: bytes | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._adopted:
            received, self._adopted = self._adopted, None
            self.data_received(received)

    def shutdown(self) -> None:
        # The server is stopping: this process takes no more connections from the others.
        if self._peers is not None:
            self._peers.close()
        super().shutdown()

    def on_message_begin(self) -> None:
        if self._handing is None:
            self._in_message = True
            super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self._handing is None:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._handing is None:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._handing is not None:
            return
        self._in_head = False
        self._head_bytes = 0
        if self._hand_over():
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]
            # The request's task starts on the loop's next turn: its scope is still ours
            # to complete.
            direct = _DirectBody(self, cycle)
            self.scope["extensions"] = {DIRECT_BODY: {"readinto": direct.readinto}}

    def reads_raw(self, cycle: RequestResponseCycle, length: int) -> bool:
        """Whether the rest of ``cycle``'s body (the request being parsed), which ends
        ``length`` bytes after its start, can be read without the parser: it is framed
        by a Content-Length of that length (not chunked), over plain TCP."""
        if self.scheme != "http" or cycle is not self.cycle:
            return False
        declared = None
        for name, value in cycle.scope["headers"]:
            if name == b"transfer-encoding":
                return False
            if name == b"content-length":
                declared = value
        return declared is not None and declared.isdigit() and int(declared) == length

    def raw_body_read(self) -> None:
        """The body read raw is over: parse again, from the next request's first byte."""
        self._new_parser()
        self.on_message_complete()
        self.transport.set_protocol(self)

    def on_body(self, body: bytes) -> None:
        if self._handing is not None:
            return
        direct = self.direct
        if direct is not None and direct.owns(self.cycle):
            direct.take(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._handing is not None:
            return
        self._in_message = False
        super().on_message_complete()
        self._in_head = True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._may_hand_over and not self._in_message and not self.pipeline:
            # Every byte read so far is parsed, up to this request's end: the next byte
            # read is the next request's first.
            self._request_chunks, self._request_bytes = [], 0

    def data_received(self, data: bytes) -> None:
        if self._request_chunks is not None:
            self._request_bytes += len(data)
            if self._request_bytes <= MAX_HANDED_BYTES:
                self._request_chunks.append(data)
            else:
                self._request_chunks = None  # too much to hand over: served here
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._refuse_head()

    def _hand_over(self) -> bool:
        """At a request's head: whether the connection is being handed to the process
        that owns the session the request names, with the request's bytes read so far
        (unparsed here from there on). Only a request whose bytes are all there, from
        its first, goes."""
        chunks, self._request_chunks = self._request_chunks, None
        if chunks is None or self._peers is None or self.scheme != "http":
            return False
        session = session_of(self.url)
        if session is None:
            return False
        owner = self._peers.owner(session)
        if owner == self._peers.name:
            return False
        self._handing = b"".join(chunks)
        self.flow.pause_reading()
        task = self.loop.create_task(self._pass_on(self._peers, owner, self._handing))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
        return True

    async def _pass_on(self, peers: Peers, owner: str, received: bytes) -> None:
        """Pass the connection to ``owner``; when it cannot go, serve it here, from the
        request's first byte."""
        connection = self.transport.get_extra_info("socket")
        try:
            taken = connection is not None and await asyncio.to_thread(
                peers.hand_over, owner, connection.fileno(), received
            )
        except OSError:  # no socket to hand over with (out of descriptors)
            taken = False
        if taken:
            self.transport.abort()  # closes this process's descriptor only
            return
        self._handing = None
        self._new_parser()
        self._in_head, self._head_bytes, self._in_message = True, 0, False
        if not self.transport.is_closing():
            self.flow.resume_reading()
            self.data_received(received)

    def _new_parser(self) -> None:
        """A parser at a request's first byte, set as uvicorn sets its own."""
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)

    def _refuse_head(self) -> None:
        body = orjson.dumps(
            {
                "type": ERROR_TYPE_BASE + "headers-too-large",
                "title": "Request header fields too large",
                "status": 431,
                "detail": f"the request line and headers are over {MAX_HEAD_BYTES} bytes",
            }
        )
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/problem+json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()


# The hand-overs under way (a task the loop holds only weakly must be kept).
_tasks: set[asyncio.Task[None]] = set()
_peers: list[Peers | None] = []


def _process_peers(*args: Any, **kwargs: Any) -> Peers | None:
    """This process as a peer of the replica's other worker processes (``PEERS_ENV``),
    made when its first connection comes: connections handed to it are served with that
    connection's server (``args``, ``kwargs``: uvicorn's config and server state)."""
    if not _peers:
        folder = os.environ.get(PEERS_ENV)
        peers = None
        if folder:
            loop = asyncio.get_running_loop()

            def adopt(connection: socket.socket, received: bytes) -> None:
                factory = functools.partial(ServiceProtocol, *args, received=received, **kwargs)
                task = loop.create_task(_adopt(loop, factory, connection))
                _tasks.add(task)
                task.add_done_callback(_tasks.discard)

            try:
                peers = Peers(Path(folder), adopt)
            except OSError as exc:  # a folder it cannot listen in: served without
                logger.warning("worker processes do not hand over connections: %s", exc)
            else:
                atexit.register(peers.close)
        _peers.append(peers)
    return _peers[0]


async def _adopt(
    loop: asyncio.AbstractEventLoop,
    factory: functools.partial[ServiceProtocol],
    connection: socket.socket,
) -> None:
    try:
        await loop.connect_accepted_socket(factory, connection)
    except OSError:
        connection.close()  # its client went away meanwhile
