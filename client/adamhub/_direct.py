"""The direct lane: a sync client's steps and parameter reads over a plain socket.

A training loop sends the same two calls thousands of times. Through httpx each costs
about 0.5 ms of the worker's CPU in request and response models (URL parsing, header
normalisation, event hooks), several times the socket work; ``http.client`` still
spends half of that parsing the answer's head with the ``email`` package and sends a
request as two packets (head, then body), waking the service twice. K workers of a
round share the machine with the service, so the lane keeps one keep-alive socket per
thread, sends each request in one write, has ``httptools`` parse the answer's head and
reads its body straight into one buffer. It hands back a plain ``httpx.Response``, so
everything after (retries, errors, results) is the client's usual code.

It is the first attempt only. Whatever it cannot settle goes the usual way: a keep-alive
connection the service had closed is sent again at once through httpx, and a failure or
an error answer counts as the first attempt of the usual retries (``Client.request``).
The lane is used only where httpx would add nothing the caller chose: plain ``http://``
services, no proxy from the environment, and an httpx client the SDK made itself.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping

import httptools
import httpx

from adamhub._base_client import RequestSpec

# A body up to this size goes in the same buffer as the head (one copy of a few KB); a
# larger one goes beside it, in the same system call.
_JOIN_BYTES = 64 * 1024
_READ_BUFFER_BYTES = 64 * 1024
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_ILLEGAL_IN_HEADERS = ("\r", "\n", "\0")


class _Closed(Exception):
    """The connection ended before the answer did (``started``: after some of it)."""

    def __init__(self, started: bool) -> None:
        super().__init__("the service closed the connection before answering")
        self.started = started


class _Answer:
    """What the parser saw of one answer."""

    __slots__ = (
        "complete",
        "declared_length",
        "head_done",
        "headers",
        "keep_alive",
        "parser",
        "pieces",
        "transfer_encoding",
    )

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.declared_length: int | None = None
        self.transfer_encoding: bytes | None = None
        self.pieces: list[bytes] = []
        self.head_done = False
        self.keep_alive = False
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            self.declared_length = int(value)
        elif lowered == b"transfer-encoding":
            self.transfer_encoding = value.lower()

    def on_headers_complete(self) -> None:
        self.head_done = True
        # Asked here: once the answer is complete, the parser has forgotten it.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def content_length(self) -> int | None:
        """The body's declared length (None: chunked, or until the connection closes)."""
        return None if self.transfer_encoding is not None else self.declared_length

    def chunked(self) -> bool:
        """Whether the body comes in chunks."""
        return self.transfer_encoding is not None and b"chunked" in self.transfer_encoding


class _Connection:
    """One keep-alive socket to the service, and the buffer its answers are read from."""

    def __init__(self, host: str, port: int, connect_timeout: float | None) -> None:
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = io.BufferedReader(socket.SocketIO(self.sock, "rb"), _READ_BUFFER_BYTES)
        self.used = False

    def send(self, head: bytes, body: bytes | memoryview | None) -> None:
        if body is None:
            self.sock.sendall(head)
        elif memoryview(body).nbytes <= _JOIN_BYTES:
            self.sock.sendall(head + body)
        else:
            sent = self.sock.sendmsg([head, body])
            if sent < len(head):
                self.sock.sendall(head[sent:])
                self.sock.sendall(body)
            else:
                self.sock.sendall(memoryview(body).cast("B")[sent - len(head) :])

    def answer(self) -> tuple[int, list[tuple[bytes, bytes]], bytearray, bool]:
        """The next answer: status, headers, body (writable: a vector's bytes are used
        in place), and whether the connection stays."""
        answer = _Answer()
        parser = answer.parser
        started = False
        while not answer.head_done:
            buffered = self.reader.peek(1)
            if not buffered:
                raise _Closed(started)
            started = True
            # The head alone goes to the parser, so that the body is read in one piece.
            end = buffered.find(b"\r\n\r\n")
            parser.feed_data(self.reader.read(end + 4 if end >= 0 else len(buffered)))
        length = answer.content_length()
        if answer.complete:  # no body, or all of it came with a head split across reads
            body = bytearray().join(answer.pieces)
        elif length is not None:
            body = bytearray(length)
            got = 0
            for piece in answer.pieces:  # a head split across reads: the body's start
                body[got : got + len(piece)] = piece
                got += len(piece)
            if self.reader.readinto(memoryview(body)[got:]) < length - got:
                raise _Closed(True)
        else:  # chunked, or until the connection closes
            while not answer.complete and (data := self.reader.read1(_READ_BUFFER_BYTES)):
                parser.feed_data(data)
            if not answer.complete and answer.chunked():
                raise _Closed(True)
            body = bytearray().join(answer.pieces)
        return parser.get_status_code(), answer.headers, body, answer.keep_alive

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class DirectLane:
    """Keep-alive sockets to one service, one per thread."""

    def __init__(self, base_url: str, timeout: httpx.Timeout | float) -> None:
        url = urllib.parse.urlsplit(base_url)
        self._base_url = base_url
        self._host = url.hostname or "localhost"
        self._port = url.port or 80
        self._host_header = url.netloc.rpartition("@")[2]  # [::1]:8000 for IPv6, as sent
        self._prefix = url.path.rstrip("/")
        limits = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._connect_timeout = limits.connect
        self._read_timeout = limits.read
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._closed = False

    @classmethod
    def serving(
        cls, base_url: str, timeout: httpx.Timeout | float, *, own_http: bool
    ) -> DirectLane | None:
        """The lane of a client, or None when httpx must send everything: an injected
        httpx client (its transport, hooks, auth are the caller's), https, or a proxy
        from the environment."""
        url = urllib.parse.urlsplit(base_url)
        if not own_http or url.scheme != "http" or not url.hostname:
            return None
        proxies = urllib.request.getproxies()
        if (proxies.get("http") or proxies.get("all")) and not urllib.request.proxy_bypass(
            url.hostname
        ):
            return None
        return cls(base_url, timeout)

    def send(self, spec: RequestSpec, headers: dict[str, str]) -> httpx.Response | None:
        """The answer to one attempt of ``spec``, or None when it should go through httpx
        (the lane is closed, a header is not one it sends, or a kept-alive connection
        turned out to be closed).

        A failure after the request may have reached the service raises the httpx error
        httpx would have raised, with its request, for the client's retries.
        """
        if self._closed:
            return None
        target = f"{self._prefix}{spec.path}"
        if spec.params:
            target = f"{target}?{urllib.parse.urlencode(spec.params, doseq=True)}"
        head = self._head(spec, target, headers)
        if head is None:
            return None
        connection: _Connection | None = None
        try:
            connection = self._connection()
            reused, connection.used = connection.used, True
            connection.send(head, spec.content)
        except OSError:
            if connection is None:  # not connected: httpx tries, with its errors
                return None
            # Not sent, or sent on a connection the service had closed: httpx sends it.
            self._drop(connection)
            return None
        try:
            status, answer_headers, body, keep_alive = connection.answer()
        except (OSError, ValueError, httptools.HttpParserError, _Closed) as exc:
            self._drop(connection)
            stale = isinstance(exc, ConnectionResetError | BrokenPipeError) or (
                isinstance(exc, _Closed) and not exc.started
            )
            if reused and stale:
                return None
            error = httpx.ReadTimeout if isinstance(exc, TimeoutError) else httpx.ReadError
            raise error(str(exc), request=self._request(spec, target)) from exc
        if not keep_alive:
            self._drop(connection)
        response = httpx.Response(status, headers=answer_headers)
        # The body as it was read, writable, so that a vector's bytes are used in place
        # (``SessionBase._vector``) rather than copied out of an immutable ``bytes``:
        # httpx keeps the body it has read in ``_content``.
        response._content = body  # type: ignore[assignment]  # bytes-like is all it needs
        if not 200 <= status < 300:
            # An error answer is turned into an exception that carries its request.
            response.request = self._request(spec, target)
        return response

    def close(self) -> None:
        """Close every connection; later calls go through httpx."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    def _head(self, spec: RequestSpec, target: str, headers: Mapping[str, str]) -> bytes | None:
        """The request's head, or None when a header could not be sent as it is (httpx
        refuses it with its own error)."""
        lines = [f"{spec.method} {target} HTTP/1.1", f"Host: {self._host_header}"]
        lines.append("Accept-Encoding: identity")
        if spec.content is not None:
            lines.append(f"Content-Length: {memoryview(spec.content).nbytes}")
        elif spec.method in _METHODS_WITH_BODY:
            lines.append("Content-Length: 0")
        for name, value in headers.items():
            if any(bad in name or bad in value for bad in _ILLEGAL_IN_HEADERS) or ":" in name:
                return None
            lines.append(f"{name}: {value}")
        lines.append("\r\n")
        try:
            return "\r\n".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            return None

    def _request(self, spec: RequestSpec, target: str) -> httpx.Request:
        return httpx.Request(spec.method, f"{self._base_url}{target[len(self._prefix) :]}")

    def _connection(self) -> _Connection:
        """This thread's connection (a new one in a forked child)."""
        pid = os.getpid()
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == pid:
            return connection
        connection = _Connection(self._host, self._port, self._connect_timeout)
        connection.sock.settimeout(self._read_timeout)
        self._local.connection, self._local.pid = connection, pid
        with self._lock:
            self._connections.append(connection)
        return connection

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self._local.connection = None
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
