"""The TypeScript client (clients/typescript): built with `npm run build`, its Node tests
run against a real service and a proxy that loses answers, and `npm pack` makes a package
a user installs and imports."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from adamhub_service.testing import DroppingProxy, ServiceProcess

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"


def npm(*args: str, cwd: Path = PACKAGE, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["npm", *args], cwd=cwd, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"npm {' '.join(args)}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def built() -> Path:
    """The package's dependencies from its lockfile, and its build."""
    npm("ci", "--no-audit", "--no-fund")
    npm("run", "build")
    return PACKAGE


def test_the_node_tests_pass_against_the_service(
    built: Path, redis_url: str, tmp_path: Path
) -> None:
    service = ServiceProcess("--redis-url", redis_url, log_path=tmp_path / "service.log").start()
    proxy = DroppingProxy(service.port, drop_ratio=0.2, seed=11)
    try:
        env = {"ADAMHUB_TEST_BASE_URL": service.base_url, "ADAMHUB_TEST_LOSSY_URL": proxy.base_url}
        output = npm("exec", "--", "node", "--test", "test/", env=env)
    finally:
        proxy.close()
        service.stop()
    print(output)
    assert "# fail 0" in output and "# pass 7" in output
    assert proxy.dropped > 0, "the lossy link lost no answer: the retry test tested nothing"


def test_npm_pack_makes_a_package_a_user_installs(built: Path, tmp_path: Path) -> None:
    packed = json.loads(npm("pack", "--json", "--pack-destination", str(tmp_path)))
    tarball = tmp_path / packed[0]["filename"]
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    assert {"package/package.json", "package/dist/index.js", "package/dist/index.d.ts",
            "package/README.md"} <= names  # fmt: skip
    assert not any("node_modules" in name or "/src/" in name for name in names)
    user = tmp_path / "user"
    user.mkdir()
    (user / "package.json").write_text('{"name": "user", "type": "module", "private": true}')
    npm("install", "--no-audit", "--no-fund", "--offline", str(tarball), cwd=user)
    check = (
        'import { Client, SessionNotFoundError } from "adamhub";'
        'const c = new Client({ baseURL: "http://127.0.0.1:1/" });'
        "console.log(c.baseURL, typeof SessionNotFoundError);"
    )
    done = subprocess.run(
        ["node", "--input-type=module", "-e", check], cwd=user,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "http://127.0.0.1:1 function"


def test_the_node_example_fits_its_line(built: Path, service_url: str) -> None:
    example = PACKAGE.parents[1] / "examples" / "node_worker.mjs"
    done = subprocess.run(
        ["node", str(example)], env={**os.environ, "ADAMHUB_BASE_URL": service_url},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    words = dict(part.split(" = ") for part in done.stdout.split(", ")[:2])
    assert abs(float(words["w"]) - 3) < 0.1 and abs(float(words["b"]) + 1) < 0.1, done.stdout
