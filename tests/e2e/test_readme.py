"""The README's curl walk-through, run as printed against a real service."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from adamhub_service.testing import ServiceProcess

README = Path(__file__).resolve().parents[2] / "README.md"


def walkthrough() -> str:
    text = README.read_text()
    block = re.search(r"<!-- walkthrough:start -->\s*```sh\n(.*?)```", text, re.DOTALL)
    assert block, "the README has no walk-through block"
    return block.group(1)


def test_readme_curl_walkthrough_works_as_printed(redis_url: str, tmp_path: Path) -> None:
    service = ServiceProcess("--redis-url", redis_url, log_path=tmp_path / "service.log").start()
    try:
        script = walkthrough().replace("localhost:8000", f"localhost:{service.port}")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        service.stop()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"t":1,"applied_t":1,"params":[0.4,-0.9,1.9]' in out  # lr 0.1: θ - 0.1·sign(g)
    assert "(0.30000001192092896, -0.7999999523162842, 1.7999999523162842)" in out
    assert "adamhub-step: 2" in out.lower()
    assert '"type":"https://adamhub.dev/errors/wrong-size"' in out
