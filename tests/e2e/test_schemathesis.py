"""Schemathesis, from PyPI, over the served OpenAPI document of the real service with a
master key: every check, no server error, no conformance failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adamhub_service.testing import ServiceProcess

MASTER = "schemathesis-master-key-0123456789"
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_failure(store_url: str, tmp_path: Path) -> None:
    service = ServiceProcess(
        "--redis-url",
        store_url,
        # Long-polls wait 1 s at most here, whatever the generated `wait`.
        env={
            "ADAMHUB_MASTER_KEY": MASTER,
            "ADAMHUB_MAX_SIZE": "100000",
            "ADAMHUB_MAX_WAIT_SECONDS": "1",
        },
        log_path=tmp_path / "service.log",
    ).start()
    try:
        command = [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file", str(CONFIG),
            "--no-color",
            "run", f"{service.base_url}/openapi.json",
            "--header", f"Authorization: Bearer {MASTER}",
            "--checks", "all",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", "15",
            "--max-time", "60",
            "--workers", "1",  # CPython 3.11's ast.parse is not thread-safe (hypothesis uses it)
            "--continue-on-failure",
            "--seed", "2026",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=400)
    finally:
        service.stop()
    output = result.stdout + result.stderr
    summary = output[output.rfind("SUMMARY") :]
    print(summary)  # the counts, for the record
    assert result.returncode == 0, output[-8000:]
    assert "passed" in summary and "failure" not in summary.lower(), summary
    assert "Server error" not in output and " 500 " not in output
    assert "Internal error" not in service.log()
