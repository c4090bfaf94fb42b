"""``adamhub-service serve`` as a child process on a free port (the demo's temporary
service; the tests and the benchmark use it through ``adamhub_service.testing``)."""

from __future__ import annotations

import os
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
