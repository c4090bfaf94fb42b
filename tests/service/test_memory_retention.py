"""The service process keeps freed memory for its next requests (cli/memory.py): a
large block freed stays in the process, unless glibc's own variables say otherwise."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")

# Frees a 64 MiB block (over glibc's largest mmap threshold) and prints how much of it
# the process still holds, then the settings its children would start with.
SCRIPT = """
import os, sys
import numpy as np
from adamhub_service.cli.memory import retain_freed_memory

if sys.argv[1] == "retain":
    assert retain_freed_memory()

def resident() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

before = resident()
block = np.ones(64 << 20, np.uint8)
del block
print(resident() - before)
print(os.environ.get("MALLOC_ARENA_MAX"), os.environ.get("MALLOC_MMAP_MAX_"))
"""
MIB = 1 << 20


def held_after_free(mode: str, **env: str) -> tuple[int, list[str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    held, settings = result.stdout.splitlines()
    return int(held), settings.split()


def test_a_freed_large_block_stays_in_the_process_and_its_children_keep_theirs() -> None:
    held, settings = held_after_free("retain")
    assert held >= 60 * MIB
    assert settings == ["1", "0"]  # what uvicorn's worker processes start with


def test_by_default_the_block_goes_back_to_the_system() -> None:
    held, settings = held_after_free("default")
    assert held < 8 * MIB
    assert settings == ["None", "None"]


def test_a_setting_in_the_environment_is_left_as_it_is() -> None:
    # Blocks may be mapped on their own again: the freed one is unmapped at once.
    held, settings = held_after_free("retain", MALLOC_MMAP_MAX_="65536")
    assert held < 8 * MIB
    assert settings == ["1", "65536"]
