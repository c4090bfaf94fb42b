"""The distribution: one wheel carrying the SDK and the service, with their data files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_both_packages_and_their_files(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("adamhub-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "adamhub/__init__.py",
        "adamhub/py.typed",
        "adamhub/torch.py",
        "adamhub_service/__init__.py",
        "adamhub_service/storage/lua/commit.lua",
        "adamhub_service/storage/lua/delete.lua",
    ]:
        assert expected in names, f"{expected} is missing from {wheel.name}"
    assert not any(name.startswith(("client/", "service/", "tests/")) for name in names)
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = [
        line
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist")
    ]
    base = [line for line in requires if "extra ==" not in line]
    required = sorted(line.split()[1].rstrip(">=<0123456789.") for line in base)
    assert required == ["httptools", "httpx", "numpy"]
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "adamhub-service = adamhub_service.cli:main" in entry_points
    assert "adamhub = adamhub.cli:main" in entry_points
