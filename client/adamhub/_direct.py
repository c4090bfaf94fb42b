"""The direct lane: a sync client's steps and parameter reads over ``http.client``.

A training loop sends the same two calls thousands of times. Through httpx each costs
about 0.5 ms of the worker's CPU in request and response models (URL parsing, header
normalisation, event hooks), several times the socket work, and K workers of a round
share the machine with the service. The lane sends them over one keep-alive
``http.client`` connection per thread and hands back a plain ``httpx.Response``, so
everything after (retries, errors, results) is the client's usual code.

It is the first attempt only. Whatever it cannot settle goes the usual way: a keep-alive
connection the service had closed is sent again at once through httpx, and a failure or
an error answer counts as the first attempt of the usual retries (``Client.request``).
The lane is used only where httpx would add nothing the caller chose: plain ``http://``
services, no proxy from the environment, and an httpx client the SDK made itself.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import urllib.parse
import urllib.request
from typing import cast

import httpx

from adamhub._base_client import RequestSpec

# A reused connection that fails like this before any answer came was closed by the
# service while idle; the request is sent again at once.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class DirectLane:
    """Keep-alive ``http.client`` connections to one service, one per thread."""

    def __init__(self, base_url: str, timeout: httpx.Timeout | float) -> None:
        url = urllib.parse.urlsplit(base_url)
        self._base_url = base_url
        self._host = url.hostname or "localhost"
        self._port = url.port or 80
        self._prefix = url.path.rstrip("/")
        limits = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._connect_timeout = limits.connect
        self._read_timeout = limits.read
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []
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
        (the lane is closed, or a kept-alive connection turned out to be closed).

        A failure after the request may have reached the service raises the httpx error
        httpx would have raised, with its request, for the client's retries.
        """
        if self._closed:
            return None
        connection, reused = self._connection()
        target = f"{self._prefix}{spec.path}"
        if spec.params:
            target = f"{target}?{urllib.parse.urlencode(spec.params, doseq=True)}"
        try:
            if connection.sock is None:
                connection.connect()
                # connect() set the socket (mypy keeps it narrowed to None).
                cast(socket.socket, connection.sock).settimeout(self._read_timeout)
            connection.request(spec.method, target, body=spec.content, headers=headers)
        except (OSError, http.client.HTTPException):
            # Not sent, or sent on a connection the service had closed: httpx sends it.
            self._drop(connection)
            return None
        try:
            answer = connection.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(connection)
            if reused and isinstance(exc, _STALE):
                return None
            error = httpx.ReadTimeout if isinstance(exc, TimeoutError) else httpx.ReadError
            raise error(str(exc), request=self._request(spec, target)) from exc
        if answer.will_close:
            self._drop(connection)
        response = httpx.Response(answer.status, headers=answer.getheaders(), content=body)
        if not 200 <= answer.status < 300:
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

    def _request(self, spec: RequestSpec, target: str) -> httpx.Request:
        return httpx.Request(spec.method, f"{self._base_url}{target[len(self._prefix) :]}")

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection (a new one in a forked child), and whether it has
        carried a request before."""
        pid = os.getpid()
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == pid:
            return connection, connection.sock is not None
        connection = http.client.HTTPConnection(
            self._host, self._port, timeout=self._connect_timeout
        )
        self._local.connection, self._local.pid = connection, pid
        with self._lock:
            self._connections.append(connection)
        return connection, False

    def _drop(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        self._local.connection = None
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
