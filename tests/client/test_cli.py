"""``adamhub``, the users' command line, as a process against a real service."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import adamhub

# The installed `adamhub` script runs this module.
ADAMHUB = [sys.executable, "-m", "adamhub.cli"]


def run(service_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*ADAMHUB, "--base-url", service_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_sessions_commands(service_url: str, tmp_path: Path) -> None:
    with adamhub.Client(service_url) as client:
        session = client.create_session(
            size=3, name="cli-run-1", history_steps=5, tags=["cli-exp", "cli-gpu"]
        )
        client.create_session(size=2, name="other", tags=["cli-exp"])
        for _ in range(3):
            session.step(np.ones(3, np.float32))
    listed = run(service_url, "sessions", "list", "--name", "cli-run").stdout
    assert session.id in listed and "cli-run-1" in listed and "other" not in listed
    header, row = listed.splitlines()
    assert header.split() == ["SESSION", "NAME", "TAGS", "SIZE", "DTYPE", "T", "UPDATED"]
    assert row.split()[:3] == [session.id, "cli-run-1", "cli-exp,cli-gpu"]
    tagged = run(service_url, "sessions", "list", "--tag", "cli-exp", "--json").stdout
    assert sorted(json.loads(line)["name"] for line in tagged.splitlines()) == [
        "cli-run-1",
        "other",
    ]
    both = run(service_url, "sessions", "list", "--tag", "cli-exp", "--tag", "cli-gpu").stdout
    assert session.id in both and "other" not in both
    lines = run(service_url, "sessions", "list", "--name", "cli-run-*", "--json").stdout
    assert [json.loads(line)["t"] for line in lines.splitlines()] == [3]
    shown = json.loads(run(service_url, "sessions", "show", session.id).stdout)
    assert (shown["id"], shown["t"], shown["size"]) == (session.id, 3, 3)
    forked = run(service_url, "sessions", "fork", session.id, "--name", "cli-fork").stdout.strip()
    assert forked.startswith("s_") and forked != session.id
    assert "t=1" in run(service_url, "sessions", "rollback", session.id, "1").stdout
    checkpoint = tmp_path / "run.safetensors"
    assert "t=1" in run(service_url, "sessions", "export", session.id, "-o", str(checkpoint)).stdout
    imported = run(service_url, "sessions", "import", str(checkpoint), "--name", "back").stdout
    with adamhub.Client(service_url) as client:
        back = client.session(imported.strip())
        assert (back.t, back.name) == (1, "back")
        assert np.array_equal(back.params(), client.session(session.id).params())
    assert f"deleted {forked}" in run(service_url, "sessions", "rm", forked).stdout
    missing = run(service_url, "sessions", "show", forked, check=False)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_keys_commands(service_url: str) -> None:
    def rows() -> dict[str, list[str]]:
        lines = run(service_url, "keys", "list").stdout.splitlines()[1:]
        return {line.split()[0]: line.split() for line in lines}

    before = rows()
    secret = run(service_url, "keys", "create", "--action", "sessions.read",
                 "--description", "from the cli").stdout.strip()  # fmt: skip
    assert len(secret) >= 32 and "\n" not in secret
    (key_id,) = set(rows()) - set(before)
    tenant, actions = rows()[key_id][1:3]
    assert (tenant, actions) == ("default", "sessions.read")
    with adamhub.Client(service_url, api_key=secret) as client:
        assert client.keys.get(key_id).description == "from the cli"
    assert f"revoked {key_id}" in run(service_url, "keys", "revoke", key_id).stdout


def test_top_shows_steps_per_second_loss_workers_and_refusals(service_url: str) -> None:
    screen = {"max_norm_ratio": 3, "window": 2, "quarantine_after": 1, "quarantine_seconds": 600}
    with adamhub.Client(service_url, worker="top-worker") as client:
        session = client.create_session(size=4, name="top-demo-run", screen=screen)
        for _ in range(2):
            session.step(np.ones(4, np.float32))
        noisy = adamhub.Client(service_url, worker="top-noisy")
        with noisy, pytest.raises(adamhub.OutlierGradientError):
            noisy.session(session.id).step(np.full(4, 1e3, np.float32))
        stop = threading.Event()

        def train() -> None:
            loss = 2.0
            while not stop.is_set():
                session.step(np.ones(4, np.float32), loss=loss)
                loss *= 0.99

        worker = threading.Thread(target=train)
        worker.start()
        try:
            out = run(service_url, "top", "--name", "top-demo", "--iterations", "2",
                      "--interval", "0.5").stdout  # fmt: skip
        finally:
            stop.set()
            worker.join(10)
    frames = [frame for frame in out.split("adamhub top") if frame.strip()]
    assert len(frames) == 2
    header, row = frames[-1].strip().splitlines()[1:3]
    assert header.split() == [
        "SESSION", "NAME", "T", "STEPS/S", "LOSS", "WORKERS", "REFUSED", "QUARANTINED", "LAST",
        "STEP",
    ]  # fmt: skip
    cells = row.split()
    assert cells[0] == session.id and cells[1] == "top-demo-run"
    assert float(cells[3]) > 1  # steps/s
    assert 0 < float(cells[4]) < 2  # the last loss
    assert cells[5] == "1"  # one worker
    assert (cells[6], cells[7]) == ("1", "top-noisy")  # one refusal, its worker held
