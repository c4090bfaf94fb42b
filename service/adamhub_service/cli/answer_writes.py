"""An answer's head sent with its body, in one write.

uvicorn writes an answer's head as soon as the app starts it, and its body when the app
sends it: two sends, two packets under TCP_NODELAY, and a client woken twice. Sending is
much of a short step's cost: a round of four 1k contributions spent a tenth of the
service's time writing heads. So a request's transport holds the head until the body's
first piece, or until the loop's next turn, whichever comes first: an event stream or
a long-poll whose body comes later still gets its head at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

# A body piece up to this size is joined to the head (one copy of a few KB); a larger
# one goes beside it in the same write.
_JOIN_BYTES = 64 * 1024
_INTERIM = b"HTTP/1.1 1"


class HeadWithBody:
    """A request's view of its connection's transport that sends the answer's head
    together with the body's first piece. Interim answers (100 Continue) are not held:
    the client waits for them before sending the body."""

    __slots__ = ("_head_seen", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; the answer's head waits for the first piece of its body."""
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_BYTES:
                self._transport.write(held + bytes(data))
            else:
                self._transport.writelines((held, data))
        elif self._head_seen or bytes(data[: len(_INTERIM)]) == _INTERIM:
            self._transport.write(data)
        else:
            self._head_seen = True
            self._held = bytes(data)
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send a head still held (its body has not come on the loop's turn)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close the connection."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
