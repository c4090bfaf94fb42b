"""API keys end to end: the `keys` command beside a running service, and the SDK."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

import adamhub
from adamhub_service.testing import SERVICE_COMMAND, ServiceProcess

MASTER = "e2e-master-key-0123456789abcdef"


def keys_command(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*SERVICE_COMMAND, "keys", "--data-dir", str(data_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_keys_command_works_beside_a_running_service(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = ServiceProcess(
        "--data-dir", str(data_dir),
        env={"ADAMHUB_MASTER_KEY": MASTER},
        log_path=tmp_path / "service.log",
    ).start()  # fmt: skip
    try:
        made = keys_command(data_dir, "create", "--tenant", "acme", "--description", "team")
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip()
        assert made.stdout == secret + "\n" and secret.startswith("ahk_")  # the secret alone
        worker = keys_command(
            data_dir, "create", "--tenant", "acme", "--action", "steps.create",
            "--action", "params.read", "--expires-in", "1d",
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr
        listed = keys_command(data_dir, "list")
        assert listed.returncode == 0 and listed.stdout.count("acme") == 2
        # The store flags go after the sub-command too, as with `serve`.
        after = subprocess.run(
            [*SERVICE_COMMAND, "keys", "list", "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert after.returncode == 0, after.stderr
        assert after.stdout == listed.stdout
        assert secret not in listed.stdout
        with adamhub.Client(service.base_url, api_key=secret) as team:
            session = team.create_session(size=4)
            assert [s.id for s in team.list_sessions()] == [session.id]
        with adamhub.Client(service.base_url, api_key=worker.stdout.strip()) as limited:
            with pytest.raises(adamhub.PermissionDeniedError) as refused:
                limited.create_session(size=2)
            assert refused.value.type == "https://adamhub.dev/errors/forbidden"
            worker_session = adamhub.Session(
                limited, {"id": session.id, "t": 0, "size": 4, "dtype": "float32", "optimizer": {}}
            )
            worker_session.step([1.0, 2.0, 3.0, 4.0])
            assert worker_session.t == 1
        key_id = next(line.split()[0] for line in listed.stdout.splitlines() if "team" in line)
        revoked = keys_command(data_dir, "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        time.sleep(1.0)
        with (
            adamhub.Client(service.base_url, api_key=secret, max_retries=0) as team,
            pytest.raises(adamhub.AuthenticationError),
        ):
            team.list_sessions()
        missing = keys_command(data_dir, "revoke", key_id)
        assert missing.returncode == 1 and "no key" in missing.stderr
    finally:
        service.stop()


def test_the_sdk_manages_keys(store_url: str, tmp_path: Path) -> None:
    service = ServiceProcess(
        "--redis-url", store_url,
        env={"ADAMHUB_MASTER_KEY": MASTER},
        log_path=tmp_path / "service.log",
    ).start()  # fmt: skip
    try:
        with adamhub.Client(service.base_url, api_key=MASTER) as client:
            key = client.keys.create(tenant="sdk", actions=["sessions.read"], description="ro")
            assert key.key is not None and key.tenant == "sdk"
            assert key.actions == ("sessions.read",) and key.sessions == ("*",)
            assert client.keys.get(key.id).key is None
            assert key.id in [k.id for k in client.keys.list()]

            async def from_async() -> list[str]:
                async with adamhub.AsyncClient(service.base_url, api_key=MASTER) as aclient:
                    made = await aclient.keys.create(tenant="sdk")
                    await aclient.keys.revoke(made.id)
                    return [k.id for k in await aclient.keys.list()]

            assert key.id in asyncio.run(from_async())
            client.keys.revoke(key.id)
            with pytest.raises(adamhub.NotFoundError):
                client.keys.get(key.id)
    finally:
        service.stop()


def test_serving_beyond_loopback_without_a_master_key_warns(store_url: str, tmp_path: Path) -> None:
    service = ServiceProcess(
        "--host", "0.0.0.0", "--redis-url", store_url, log_path=tmp_path / "service.log"
    ).start()  # fmt: skip
    try:
        with adamhub.Client(service.base_url) as local:  # loopback: served as the master key
            assert local.create_session(size=2).t == 0
    finally:
        service.stop()
    assert "without a master key" in service.log() and "ADAMHUB_MASTER_KEY" in service.log()
    quiet = ServiceProcess(
        "--redis-url", store_url, "--master-key", MASTER, log_path=tmp_path / "quiet.log"
    ).start()  # fmt: skip
    try:
        with (
            adamhub.Client(quiet.base_url, max_retries=0) as anonymous,
            pytest.raises(adamhub.AuthenticationError),
        ):
            anonymous.list_sessions()
    finally:
        quiet.stop()
    assert "without a master key" not in quiet.log()
