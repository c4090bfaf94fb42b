"""uvicorn's HTTP protocol with a bound on a request's head (request line and headers).

httptools keeps reading a header of any size; this protocol answers 431 and closes the
connection as soon as a head passes ``MAX_HEAD_BYTES`` without being complete.
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from adamhub_service.errors import ERROR_TYPE_BASE

MAX_HEAD_BYTES = 64 * 1024


class BoundedHeadProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses heads over ``MAX_HEAD_BYTES`` with a 431."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

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
