"""The Adam update as one fused, compiled pass over θ, m, v (numba).

numpy evaluates the update as a dozen whole-vector operations, each a pass over memory
with a temporary; this kernel reads each element once, does the same IEEE operations
in the same order (so the bits are the same: no fast-math, no reassociation, no fused
multiply-add, scalars in the state's dtype), writes θ, m, v (and max v), and counts the
results that are not finite. It runs on every core (numba's parallel loops, which it
also vectorises). numexpr was exact too, but 3× slower (docs/architecture.md, "The
arithmetic").

numba's thread pools: OpenMP (libgomp) or TBB may be entered by several threads at
once; its fallback, the workqueue, may not, so with it launches take a lock. Compiled
code is cached on disk.
"""

from __future__ import annotations

import contextlib
import os
import threading
import types
from typing import Any

import numba
import numpy as np
from numba import threading_layer  # type: ignore[attr-defined]

# Threads of the pool sleep when a loop ends instead of spinning for the next: the
# service's other work (HTTP, the store) needs the cores between loops.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Thread-safe pools first (numba's default order puts TBB first, and TBB, unlike
# OpenMP, is rarely installed).
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]  # type: ignore[attr-defined]
_workqueue_lock = threading.Lock()

# Weight decay modes.
NO_DECAY, COUPLED_DECAY, DECOUPLED_DECAY = 0, 1, 2

# Below this many elements, starting the thread pool costs more than the loop: the same
# loops run in the calling thread (the same operations per element, so the same bits).
SERIAL_ELEMENTS = 1 << 15


@numba.njit(cache=True, nogil=True, parallel=True)
def _update(
    params: Any,
    exp_avg: Any,
    exp_avg_sq: Any,
    max_exp_avg_sq: Any,
    grad: Any,
    out_params: Any,
    out_exp_avg: Any,
    out_exp_avg_sq: Any,
    out_max: Any,
    maximize: bool,
    decay_mode: int,
    decay: Any,
    one_minus_beta1: Any,
    small_weight: bool,
    beta1_complement: Any,
    beta2: Any,
    one_minus_beta2: Any,
    bias_correction2_sqrt: Any,
    eps: Any,
    neg_step_size: Any,
    amsgrad: bool,
) -> int:
    not_finite = 0
    for i in numba.prange(params.size):
        g = grad[i]
        if maximize:
            g = -g
        p = params[i]
        if decay_mode == 1:
            g = g + p * decay
        elif decay_mode == 2:
            p = p * decay
        m = exp_avg[i]
        # torch: exp_avg.lerp_(grad, w = 1 - beta1), which is m + w * (g - m) for
        # |w| < 0.5 and g - (g - m) * (1 - w) otherwise (ATen's lerp: the larger weight
        # without the cancellation of m + w * (g - m) when w is near 1).
        new_m = (g - m) * one_minus_beta1 + m if small_weight else g - (g - m) * beta1_complement
        # torch: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        new_v = exp_avg_sq[i] * beta2 + (one_minus_beta2 * g) * g
        if amsgrad:
            previous = max_exp_avg_sq[i]
            largest = previous if previous > new_v else new_v
            out_max[i] = largest
            denom = np.sqrt(largest) / bias_correction2_sqrt + eps
        else:
            denom = np.sqrt(new_v) / bias_correction2_sqrt + eps
        # torch: param.addcdiv_(exp_avg, denom, value=-step_size)
        new_p = p + (neg_step_size * new_m) / denom
        out_params[i] = new_p
        out_exp_avg[i] = new_m
        out_exp_avg_sq[i] = new_v
        # x - x is 0 for a finite x and NaN otherwise: a test without a branch.
        check = (new_p - new_p) + (new_m - new_m) + (new_v - new_v)
        not_finite += check != check
    return not_finite


def _serial(parallel: Any) -> Any:
    """The loops of a parallel kernel, compiled to run in the calling thread.

    Compiled from a copy of its function under a name of its own: numba names a cached
    build after the function (qualified name and line), and a serial njit of the same
    function loaded the parallel build from the cache, so every short vector launched
    the thread pool (a 1k step: three launches, two thread wake-ups each)."""
    source = parallel.py_func
    name = f"{source.__name__}_serial"
    copy = types.FunctionType(
        source.__code__, source.__globals__, name, source.__defaults__, source.__closure__
    )
    copy.__qualname__ = f"{source.__qualname__}_serial"
    return numba.njit(cache=True, nogil=True)(copy)


_update_serial = _serial(_update)


@numba.njit(cache=True, nogil=True, parallel=True)
def _block_sums_of_squares(grad: Any, block: int) -> Any:
    blocks = (grad.size + block - 1) // block
    sums = np.empty(blocks, np.float64)
    for b in numba.prange(blocks):
        total = 0.0
        for i in range(b * block, min(grad.size, (b + 1) * block)):
            x = np.float64(grad[i])
            total += x * x
        sums[b] = total
    return sums


@numba.njit(cache=True, nogil=True, parallel=True)
def _accumulate(total: Any, grad: Any, weight: Any) -> None:
    for i in numba.prange(total.size):
        total[i] += np.float64(grad[i]) * weight


def accumulate(total: Any, grad: Any, weight: float) -> None:
    """``total += weight · grad`` elementwise in float64 (``total`` is float64): each
    element by the same two operations (a product, then a sum, each rounded once)
    whatever the cores, or numpy for a short vector."""
    if total.size < SERIAL_ELEMENTS:
        total += grad.astype(np.float64) * np.float64(weight)
        return
    with _launch:
        _accumulate(total, grad, np.float64(weight))


@numba.njit(cache=True, nogil=True, parallel=True)
def _mean_pass(total: Any, grad: Any, weight: Any, first: bool, divisor: Any, out: Any) -> None:
    # total = 0 + w·g on the first pass (no zeroed vector to read), total + w·g after;
    # on the last (``out`` not empty) the sum divided and rounded into ``out`` instead.
    last = out.size > 0
    for i in numba.prange(grad.size):
        start = 0.0 if first else total[i]
        summed = start + np.float64(grad[i]) * weight
        if last:
            out[i] = summed / divisor
        else:
            total[i] = summed


def weighted_sum_into(out: Any, weighted: Any) -> None:
    """``out`` = round(Σ nᵢ·gᵢ / Σ nᵢ) for ``weighted`` = [(nᵢ, gᵢ)], the sum in float64
    in the order given, each term a product then a sum, each rounded once (as
    ``zeros(); += g·n …; /= Σn; astype`` computes it) in one pass over each gᵢ: no
    zeroed sum, no separate division or rounding pass. ``out`` is float32 or float64, the
    gᵢ of the dtypes the kernels take."""
    divisor = np.float64(sum(samples for samples, _ in weighted))
    if out.size < SERIAL_ELEMENTS:
        total = np.zeros(out.size)
        for samples, grad in weighted:
            accumulate(total, grad, samples)
        total /= divisor
        out[:] = total
        return
    total = np.empty(0 if len(weighted) == 1 else out.size)
    none = out[:0]
    with _launch:
        for index, (samples, grad) in enumerate(weighted):
            last = index == len(weighted) - 1
            _mean_pass(total, grad, np.float64(samples), index == 0, divisor, out if last else none)


@numba.njit(cache=True, nogil=True, parallel=True)
def _block_sums_of_squared_differences(a: Any, b: Any, block: int) -> Any:
    blocks = (a.size + block - 1) // block
    sums = np.empty(blocks, np.float64)
    for k in numba.prange(blocks):
        total = 0.0
        for i in range(k * block, min(a.size, (k + 1) * block)):
            x = np.float64(a[i]) - np.float64(b[i])
            total += x * x
        sums[k] = total
    return sums


_block_sums_of_squared_differences_serial = _serial(_block_sums_of_squared_differences)
_block_sums_of_squares_serial = _serial(_block_sums_of_squares)


def squared_distance(a: Any, b: Any) -> float:
    """Σ (a − b)², in float64 (the size of an update, for the history)."""
    if a.size < SERIAL_ELEMENTS:
        return float(_block_sums_of_squared_differences_serial(a, b, 1 << 16).sum())
    with _launch:
        sums = _block_sums_of_squared_differences(a, b, 1 << 16)
    return float(sums.sum())


def squared_norm(grad: Any) -> float:
    """Σ g², in float64, summed in one fixed order (blocks of 2^16 in sequence, then
    the blocks in sequence) whatever the cores: a replayed step clips the same."""
    if grad.size < SERIAL_ELEMENTS:
        return float(_block_sums_of_squares_serial(grad, 1 << 16)[0]) if grad.size else 0.0
    with _launch:
        sums = _block_sums_of_squares(grad, 1 << 16)
    total = 0.0
    for value in sums.tolist():
        total += value
    return total


def fused_update(*arrays: Any, scalars: tuple[Any, ...]) -> int:
    """Run the kernel; the number of elements with a non-finite result.

    ``arrays`` are θ, m, v, max v (in), the gradient, θ, m, v, max v (out); ``scalars``
    the flags and coefficients, in the kernel's order.
    """
    if arrays[0].size < SERIAL_ELEMENTS:
        return int(_update_serial(*arrays, *scalars))
    with _launch:
        return int(_update(*arrays, *scalars))


# The first launch (here, at import, in one thread) picks the thread pool.
_one, _unit = np.zeros(1, np.float32), np.float32(1)
_update(
    _one, _one, _one, _one, _one, _one, _one, _one, _one,
    False, NO_DECAY, _unit, _unit, True, _unit, _unit, _unit, _unit, _unit, _unit, False,
)  # fmt: skip
_launch: contextlib.AbstractContextManager[object] = (
    _workqueue_lock if threading_layer() == "workqueue" else contextlib.nullcontext()
)
