"""The Dockerfile and docker-compose.yml: checked as files, and their topology run natively.

There is no Docker engine here, so the compose topology is reproduced with real
processes: a redis-server with the compose file's arguments, and the service started
with the image's command and the environment of the image and the compose file.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

import adamhub
from adamhub_service.optim import AdamConfig, adam_step, init_state
from adamhub_service.testing import HAProxy, ServiceProcess, StoreCluster, StoreServer, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [
        (parts[0].upper(), parts[1].strip() if len(parts) > 1 else "")
        for line in joined.splitlines()
        if line.strip()
        for parts in [line.strip().split(None, 1)]
    ]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(args))  # type: ignore[misc]
    return env


def exec_form(instruction: str) -> list[str]:
    args = [a for i, a in dockerfile_instructions() if i == instruction][-1]
    if instruction == "HEALTHCHECK":
        args = args.split("CMD", 1)[1].strip()
    parsed: list[str] = yaml.safe_load(args)  # a JSON array is YAML too
    return parsed


SECRETS = {"ADAMHUB_MASTER_KEY": "m" * 32, "ADAMHUB_REDIS_PASSWORD": "redis-secret"}


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Compose's ``${NAME}`` and ``${NAME:?message}``: a required variable that is
    missing stops compose (here: KeyError)."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(?::\?[^}]*)?\}", lambda m: variables[m.group(1)], value)
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    return value


def test_compose_file_structure(compose: dict[str, Any]) -> None:
    redis, service = compose["services"]["redis"], compose["services"]["adamhub"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert redis["volumes"][0].split(":")[0] in compose["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert service["build"] == "."
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    environment = service["environment"]
    # Compose refuses to start without the secrets (`${NAME:?message}`).
    assert command[command.index("--requirepass") + 1].startswith("${ADAMHUB_REDIS_PASSWORD:?")
    assert environment["ADAMHUB_MASTER_KEY"].startswith("${ADAMHUB_MASTER_KEY:?")
    assert "${ADAMHUB_REDIS_PASSWORD:?" in environment["ADAMHUB_REDIS_URL"]
    with pytest.raises(KeyError):
        interpolate(environment, {})
    url = interpolate(environment, SECRETS)["ADAMHUB_REDIS_URL"]
    assert url == "redis://:redis-secret@redis:6379/0"
    # The port is published on this machine only.
    assert service["ports"] == ["127.0.0.1:8000:8000"]


def test_dockerfile_structure() -> None:
    instructions = dockerfile_instructions()
    names = [name for name, _ in instructions]
    assert instructions[0][0] == "FROM" and instructions[0][1].endswith("-slim")
    user = next(args for name, args in instructions if name == "USER")
    assert user not in ("root", "0")
    # Dependencies are installed before the sources are copied (a cached layer).
    first_install = next(
        i for i, (n, a) in enumerate(instructions) if n == "RUN" and "requirements" in a
    )
    first_source = next(
        i for i, (n, a) in enumerate(instructions) if n == "COPY" and "service" in a
    )
    assert first_install < first_source
    assert "healthz" in " ".join(exec_form("HEALTHCHECK"))
    assert exec_form("CMD") == ["adamhub-service", "serve"]
    assert "EXPOSE" in names and "VOLUME" in names


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_topology_runs_natively(compose: dict[str, Any], tmp_path: Path) -> None:
    compose = interpolate(compose, SECRETS)
    redis_port = free_port()
    redis_args = compose["services"]["redis"]["command"][1:]
    store = StoreServer(*redis_args, port=redis_port, data_dir=tmp_path / "redis-data").start()
    environment = {**dockerfile_env(), **compose["services"]["adamhub"]["environment"]}
    service_port = free_port()
    environment["ADAMHUB_REDIS_URL"] = environment["ADAMHUB_REDIS_URL"].replace(
        "redis:6379", f"127.0.0.1:{redis_port}"
    )
    environment["ADAMHUB_PORT"] = str(service_port)
    environment["ADAMHUB_DATA_DIR"] = str(tmp_path / "unused")
    assert exec_form("CMD") == ["adamhub-service", "serve"]
    service = ServiceProcess(port=service_port, env=environment, log_path=tmp_path / "service.log")
    service.args = []  # the image's command takes everything from the environment
    service.start()
    try:
        # The image's HEALTHCHECK command, pointed at this port.
        check = [part.replace("8000", str(service_port)) for part in exec_form("HEALTHCHECK")]
        check[0] = sys.executable
        assert subprocess.run(check, timeout=30).returncode == 0
        master_key = SECRETS["ADAMHUB_MASTER_KEY"]
        with (
            adamhub.Client(service.base_url) as anonymous,
            pytest.raises(adamhub.AuthenticationError),
        ):
            anonymous.create_session(size=3)
        with adamhub.Client(service.base_url, api_key=master_key) as client:
            session = client.create_session(size=100, optimizer={"lr": 0.1})
            for _ in range(20):
                params = session.step(np.ones(100))
            assert session.t == 20
        # Redis restarts (its AOF is on, as in the compose file): nothing is lost.
        store.stop()
        store.start()
        with adamhub.Client(service.base_url, api_key=master_key, max_retries=5) as client:
            again = client.session(session.id)
            assert again.t == 20
            assert np.array_equal(again.params(), params)
    finally:
        service.stop()
        store.cleanup()


def cluster_node_args(compose: dict[str, Any]) -> list[str]:
    """The redis-server arguments of the compose file's cluster nodes (`sh -c "exec …"`)."""
    node = compose["services"]["redis-node-1"]
    script = node["command"][-1].replace("$$REDIS_PASSWORD", node["environment"]["REDIS_PASSWORD"])
    words = shlex.split(script)
    assert words[:2] == ["exec", "redis-server"]
    return words[2:]


def test_the_cluster_profile_is_three_primaries_three_replicas_three_replicas_and_haproxy(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    cluster = {
        name for name, service in services.items() if "cluster" in service.get("profiles", [])
    }
    nodes = {f"redis-node-{n}" for n in range(1, 7)}
    replicas = {f"adamhub-{n}" for n in range(1, 4)}
    assert cluster == nodes | replicas | {"redis-cluster-init", "haproxy"}
    assert "--cluster-replicas 1" in services["redis-cluster-init"]["command"][-1]
    for name in replicas:
        environment = services[name]["environment"]
        assert environment["ADAMHUB_REDIS_CLUSTER"] == "true"
        assert environment["ADAMHUB_REPLICA_ACKS"] == "1"
        assert environment["ADAMHUB_REDIS_URL"].endswith("@redis-node-1:6379/0")
    haproxy = services["haproxy"]
    assert haproxy["ports"] == ["127.0.0.1:8000:8000"]
    assert haproxy["volumes"] == ["./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"]
    servers = re.findall(
        r"^\s*server (\S+) (\S+)$", (ROOT / "deploy/haproxy.cfg").read_text(), re.M
    )
    assert servers == [(name, f"{name}:8000") for name in sorted(replicas)]


def native_haproxy_config(ports: list[int], port: int) -> str:
    """deploy/haproxy.cfg with its replicas and its front on this machine's ports."""
    config = (ROOT / "deploy/haproxy.cfg").read_text()
    config = config.replace("bind :8000", f"bind 127.0.0.1:{port}")
    for n, replica_port in enumerate(ports, start=1):
        config = config.replace(f"adamhub-{n}:8000", f"127.0.0.1:{replica_port}")
    return config


def served_steps(log: Path, session_id: str) -> int:
    """How many steps of the session a replica's log shows it served."""
    return sum(
        1 for line in log.read_text().splitlines() if "/step 200" in line and session_id in line
    )


def test_haproxy_keeps_a_replica_that_answers_only_loopback_names(
    store_url: str, tmp_path: Path
) -> None:
    """deploy/haproxy.cfg's health check names a Host that a replica bound to loopback
    (ADAMHUB_ALLOWED_HOSTS: the loopback names) answers: past two failed checks it
    would take every replica out and answer 503."""
    replica = ServiceProcess("--redis-url", store_url, log_path=tmp_path / "adamhub.log").start()
    front = free_port()
    balancer = HAProxy(native_haproxy_config([replica.port] * 3, front), front)
    try:
        balancer.start()
        time.sleep(5)  # checks every 2 s; two that fail take a replica out
        assert httpx.get(f"{balancer.base_url}/readyz", timeout=10).status_code == 200
    finally:
        balancer.stop()
        replica.stop()


def test_the_cluster_profile_runs_natively(compose: dict[str, Any], tmp_path: Path) -> None:
    """The compose file's cluster topology, as processes: a cluster of 3 primaries and 3
    replicas with the nodes' arguments, 3 adamhub replicas with their environment, and
    deploy/haproxy.cfg in front. A session's steps all reach one replica; when that one
    stops, another takes the session over, exactly."""
    compose = interpolate(compose, SECRETS)
    password = SECRETS["ADAMHUB_REDIS_PASSWORD"]
    cluster = StoreCluster(3, 1, *cluster_node_args(compose), password=password).start()
    replicas: list[ServiceProcess] = []
    balancer = None
    try:
        for n in range(1, 4):
            environment = {**dockerfile_env(), **compose["services"][f"adamhub-{n}"]["environment"]}
            environment["ADAMHUB_REDIS_URL"] = cluster.url
            environment["ADAMHUB_PORT"] = str(free_port())
            environment["ADAMHUB_WORKERS"] = "1"  # two cores here
            replica = ServiceProcess(
                port=int(environment["ADAMHUB_PORT"]),
                env=environment,
                log_path=tmp_path / f"adamhub-{n}.log",
            )
            replicas.append(replica.start())
        front = free_port()
        balancer = HAProxy(native_haproxy_config([r.port for r in replicas], front), front)
        balancer.start()
        master_key = SECRETS["ADAMHUB_MASTER_KEY"]
        config = AdamConfig(lr=0.1)
        state = init_state(np.zeros(100, np.float32), config)
        with adamhub.Client(
            balancer.base_url, api_key=master_key, max_retries=20, max_retry_delay=0.5
        ) as client:
            session = client.create_session(size=100, optimizer={"lr": 0.1})
            for i in range(20):
                gradient = np.full(100, i + 1, np.float32)
                session.step(gradient)
                state = adam_step(state, gradient, config)
            # A replica logs a request once it has answered it: wait for the last line.
            deadline = time.monotonic() + 5
            served = [served_steps(r.log_path, session.id) for r in replicas]
            while sum(served) < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
                served = [served_steps(r.log_path, session.id) for r in replicas]
            assert sorted(served) == [0, 0, 20], served  # one replica served them all
            # That replica stops: the health check takes it out, another takes over.
            replicas[served.index(20)].stop()
            for i in range(20, 30):
                gradient = np.full(100, i + 1, np.float32)
                session.step(gradient)
                state = adam_step(state, gradient, config)
            assert session.t == 30
            assert session.params().tobytes() == state.params.tobytes()
    finally:
        if balancer is not None:
            balancer.stop()
        for replica in replicas:
            replica.stop()
        cluster.cleanup()
