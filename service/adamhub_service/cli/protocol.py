"""uvicorn's HTTP protocol with a bound on a request's head, and bodies read straight
into place.

- httptools keeps reading a header of any size; this protocol answers 431 and closes
  the connection as soon as a head passes ``MAX_HEAD_BYTES`` without being complete.
- ASGI hands a body to the app in messages: each piece is appended to a buffer, copied
  out of it into a message, and copied again by the app into its vector, one event-loop
  wake-up per piece. A request's ``DIRECT_BODY`` extension (``api/bodies.py``) lets the
  app give the buffer the body belongs in: each piece is copied there as it is parsed,
  and the app wakes once, when the body is complete (a 40 MB gradient: 160 pieces).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from adamhub_service.api.bodies import DIRECT_BODY
from adamhub_service.errors import ERROR_TYPE_BASE

MAX_HEAD_BYTES = 64 * 1024


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
        return None if cycle.disconnected else self._filled


class ServiceProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses heads over ``MAX_HEAD_BYTES`` with a 431 and
    offers each request the ``DIRECT_BODY`` extension."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        # The body being read straight into place, while its reader waits.
        self.direct: _DirectBody | None = None

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            # The request's task starts on the loop's next turn: its scope is still ours
            # to complete.
            direct = _DirectBody(self, cycle)
            self.scope["extensions"] = {DIRECT_BODY: {"readinto": direct.readinto}}

    def on_body(self, body: bytes) -> None:
        direct = self.direct
        if direct is not None and direct.owns(self.cycle):
            direct.take(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._refuse_head()

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
