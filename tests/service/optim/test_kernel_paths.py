"""Short vectors run the kernels in the calling thread, long ones on the thread pool:
both paths give the same bits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adamhub_service.optim import kernel


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight", [0.1, 0.8])  # both of torch's lerp formulas
def test_the_update_in_one_thread_equals_the_parallel_one(
    dtype: Any, amsgrad: bool, weight: float
) -> None:
    rng = np.random.default_rng(7)
    size = 5_000
    params, exp_avg, grad = (np.asarray(rng.normal(size=size), dtype) for _ in range(3))
    exp_avg_sq, max_sq = (np.asarray(rng.random(size), dtype) for _ in range(2))
    grad[::97] = 0
    w = dtype(weight)
    rest = tuple(dtype(x) for x in (0.999, 0.001, 0.3, 1e-8, -0.001))
    scalars = (dtype(0.01), w, bool(w < 0.5), dtype(1) - w, *rest)
    outputs = []
    updates: tuple[Any, ...] = (kernel._update, kernel._update_serial)
    for update in updates:
        out = [np.zeros_like(params) for _ in range(4)]
        not_finite = update(
            params, exp_avg, exp_avg_sq, max_sq, grad, *out,
            False, kernel.DECOUPLED_DECAY, *scalars, amsgrad,
        )  # fmt: skip
        outputs.append((not_finite, [vector.tobytes() for vector in out]))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_accumulating_a_short_vector_equals_the_kernel(dtype: Any) -> None:
    rng = np.random.default_rng(3)
    size = kernel.SERIAL_ELEMENTS - 1
    through_numpy, through_kernel = np.zeros(size), np.zeros(size)
    for weight in (3, 1, 17):
        gradient = np.asarray(rng.normal(size=size), dtype)
        kernel.accumulate(through_numpy, gradient, weight)
        wide = gradient.astype(np.float32) if dtype == np.float16 else gradient
        kernel._accumulate(through_kernel, wide, np.float64(weight))
    assert through_numpy.tobytes() == through_kernel.tobytes()


def test_norms_of_a_short_vector_equal_the_kernels() -> None:
    rng = np.random.default_rng(5)
    a, b = (rng.normal(size=kernel.SERIAL_ELEMENTS - 1) for _ in range(2))
    parallel_norm = float(kernel._block_sums_of_squares(a, 1 << 16).sum())
    assert kernel.squared_norm(a) == parallel_norm
    parallel_distance = float(kernel._block_sums_of_squared_differences(a, b, 1 << 16).sum())
    assert kernel.squared_distance(a, b) == parallel_distance
    assert kernel.squared_norm(a[:0]) == 0.0


# Runs each short-vector kernel 200 times and prints how often the process's other
# threads (numba's pool, started at import) were woken meanwhile.
WAKE_UPS = """
import os
import numpy as np
from adamhub_service.optim import kernel

def other_threads_switches() -> int:
    total = 0
    for task in os.listdir("/proc/self/task"):
        if int(task) == os.getpid():
            continue
        with open(f"/proc/self/task/{task}/status") as status:
            total += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
    return total

vector = np.ones(1000, np.float32)
state = [np.zeros(1000, np.float32) for _ in range(4)]
one = np.float32(1)
scalars = (False, kernel.NO_DECAY, one, one, True, one, one, one, one, one, one, False)
for _ in range(3):  # loaded (from the cache) and warm
    kernel.fused_update(*state, vector, *state, scalars=scalars)
    kernel.squared_norm(vector)
    kernel.squared_distance(vector, state[0])
before = other_threads_switches()
for _ in range(200):
    kernel.fused_update(*state, vector, *state, scalars=scalars)
    kernel.squared_norm(vector)
    kernel.squared_distance(vector, state[0])
print(other_threads_switches() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="Linux's /proc")
def test_short_vectors_never_wake_the_thread_pool() -> None:
    """The serial kernels run in the calling thread, also when a process loads them from
    numba's cache (where this module's import has just put them): a serial build
    cached under the parallel one's name loaded the parallel build instead."""
    result = subprocess.run(
        [sys.executable, "-c", WAKE_UPS], capture_output=True, text=True, check=True
    )
    assert int(result.stdout) < 50  # 600 kernel calls; with the pool, 600 and more
