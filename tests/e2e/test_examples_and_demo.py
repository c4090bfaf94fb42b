"""The examples and the demo, run as a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from adamhub_service.testing import SERVICE_COMMAND

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*command: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_numpy_worker_fits_its_regression(service_url: str) -> None:
    out = run(
        sys.executable,
        str(EXAMPLES / "numpy_worker.py"),
        "--base-url",
        service_url,
        "--steps",
        "300",
    )
    final = re.search(r"final loss ([\d.]+); w ≈ \[(.*)\]", out)
    assert final, out
    assert float(final.group(1)) < 0.05
    assert np.allclose([float(v) for v in final.group(2).split(",")], np.arange(1, 11), atol=0.1)


def test_two_numpy_workers_share_one_session(service_url: str) -> None:
    first = run(
        sys.executable,
        str(EXAMPLES / "numpy_worker.py"),
        "--base-url",
        service_url,
        "--steps",
        "50",
    )
    session_id = re.search(r"created session (\S+)", first)
    assert session_id, first
    run(sys.executable, str(EXAMPLES / "numpy_worker.py"), "--base-url", service_url,
        "--session", session_id.group(1), "--steps", "50", "--seed", "1")  # fmt: skip
    assert httpx.get(f"{service_url}/v1/sessions/{session_id.group(1)}").json()["t"] == 100


def test_torch_worker_trains(service_url: str) -> None:
    pytest.importorskip("torch", reason="the PyTorch example needs torch")
    out = run(sys.executable, str(EXAMPLES / "torch_worker.py"), "--base-url", service_url)
    first = float(re.findall(r"step 1: loss ([\d.]+)", out)[0])
    final = float(re.findall(r"final loss ([\d.]+)", out)[0])
    assert final < first / 5, out
    assert "t=300" in out


def test_curl_session_script(service_url: str) -> None:
    out = run(
        "bash",
        str(EXAMPLES / "curl_session.sh"),
        env={"ADAMHUB": service_url, "PATH": "/usr/bin:/bin"},
    )
    assert "binary answer: 16 bytes" in out
    assert '"t":11' in out and out.strip().endswith("deleted")


def test_demo_trains_and_exits_0() -> None:
    out = run(*SERVICE_COMMAND, "demo", "--workers", "3", "--steps", "40")
    assert "steps: 120 applied of 120 sent" in out
    losses = re.search(r"([\d.]+) at the start → ([\d.]+) now", out)
    assert losses, out
    assert float(losses.group(2)) < float(losses.group(1)) / 2
    assert out.strip().endswith("done")
    # Progress: the whole-data loss at the start and at every tenth, never a nan.
    assert "nan" not in out.lower()
    progress = re.findall(r"^\s+(\d+)%\s+steps\s+(\d+)\s+loss ([\d.]+)$", out, re.MULTILINE)
    assert [int(percent) for percent, _, _ in progress] == list(range(0, 101, 10)), out
    assert float(progress[-1][2]) < float(progress[0][2]) / 2


def test_resume_from_checkpoint_example(service_url: str) -> None:
    out = run(sys.executable, str(EXAMPLES / "resume_from_checkpoint.py"), "--base-url",
              service_url)  # fmt: skip
    assert "resumed session" in out and "at t=50" in out
    assert "the resumed run matches: True" in out, out


def test_torch_move_run_example(service_url: str) -> None:
    pytest.importorskip("torch", reason="the PyTorch example needs torch")
    out = run(sys.executable, str(EXAMPLES / "torch_move_run.py"), "--base-url", service_url)
    worst = float(re.findall(r"never moved: ([\d.e+-]+)", out)[0])
    assert worst <= 1e-5, out
    assert "t=60" in out


def test_demo_sync_matches_one_worker_with_the_whole_batch() -> None:
    out = run(*SERVICE_COMMAND, "demo", "--sync", "--workers", "3", "--steps", "40")
    assert "rounds: t=40 for 120 contributions" in out
    rounds = re.findall(r"round\s+(\d+)/40\s+t=(\d+)\s+batch loss ([\d.]+)", out)
    assert rounds and all(r == t for r, t, _ in rounds), out
    deviation = re.search(r"reaches the same parameters: max \|Δθ\| = ([\d.e+-]+)", out)
    assert deviation, out
    assert float(deviation.group(1)) <= 1e-4
    assert out.strip().endswith("done")


def test_ddp_workers_hold_the_same_parameters(service_url: str) -> None:
    pytest.importorskip("torch", reason="the DDP example needs torch")
    out = run(sys.executable, str(EXAMPLES / "ddp_workers.py"), "--base-url", service_url,
              "--workers", "2", "--steps", "30")  # fmt: skip
    assert "workers hold the same parameters: True" in out
    assert "(t=30 for 60 gradients)" in out
    first = float(re.findall(r"round 1: worker 0 batch loss ([\d.]+)", out)[0])
    final = float(re.findall(r"final loss ([\d.]+)", out)[0])
    assert final < first, out


def test_local_sgd_outer_adam_converges(service_url: str) -> None:
    out = run(sys.executable, str(EXAMPLES / "local_sgd.py"), "--base-url", service_url,
              "--workers", "3", "--rounds", "20")  # fmt: skip
    assert "after t=20 outer steps" in out
    first = float(re.findall(r"round 1: worker 0's loss at the global parameters ([\d.]+)", out)[0])
    final = float(re.findall(r"final mean loss ([\d.]+)", out)[0])
    assert final < first / 5, out


@pytest.mark.parametrize("example", ["moe_partial.py", "unfreeze.py", "amp_gradscaler.py"])
def test_torch_recipe_examples_match_torch(service_url: str, example: str) -> None:
    pytest.importorskip("torch", reason="the PyTorch examples need torch")
    out = run(sys.executable, str(EXAMPLES / example), "--base-url", service_url)
    deviation = re.search(r"max \|θ − θ_torch\| = ([\d.e+-]+)", out)
    assert deviation, out
    assert float(deviation.group(1)) <= 1e-5
    if example == "moe_partial.py":
        counts = re.search(r"per-tensor step counts: \[(.*)\] \(session t=(\d+)\)", out)
        assert counts, out
        assert len(counts.group(1).split(",")) > 1  # the experts took different steps
    if example == "amp_gradscaler.py":
        skipped = re.search(r"(\d+) steps skipped by the scaler; session t=(\d+)", out)
        assert skipped and int(skipped.group(1)) == 2 and int(skipped.group(2)) == 38, out


def test_robust_rounds_example_trains_despite_a_bad_worker(service_url: str) -> None:
    out = run(sys.executable, str(EXAMPLES / "robust_rounds.py"), "--base-url", service_url)
    found = re.search(r"error ([\d.]+) -> ([\d.]+)", out)
    assert found, out
    start, end = float(found.group(1)), float(found.group(2))
    assert end < start / 10
    assert "quarantined: ['bad-worker']" in out
