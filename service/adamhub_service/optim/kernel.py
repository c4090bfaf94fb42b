"""The Adam update as one fused, compiled pass over θ, m, v (numba).

numpy evaluates the update as a dozen whole-vector operations, each a pass over memory
with a temporary; this kernel reads each element once, does the same IEEE operations
in the same order (so the bits are the same: no fast-math, no reassociation, no fused
multiply-add, scalars in the state's dtype), writes θ, m, v (and max v), and counts the
results that are not finite. numexpr was exact too, but 3× slower (docs/architecture.md,
"The arithmetic").

Vectors of ``PARALLEL_THRESHOLD`` elements and more are split into blocks run on every
core; numba's default thread pool may only be entered by one thread at a time, so those
calls take a lock (they use every core anyway). Compiled code is cached on disk.
"""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np

PARALLEL_THRESHOLD = 1 << 17
_BLOCK = 1 << 15
_parallel_lock = threading.Lock()

# Weight decay modes.
NO_DECAY, COUPLED_DECAY, DECOUPLED_DECAY = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def _update_range(
    lo: int,
    hi: int,
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
    beta2: Any,
    one_minus_beta2: Any,
    bias_correction2_sqrt: Any,
    eps: Any,
    neg_step_size: Any,
    amsgrad: bool,
) -> int:
    not_finite = 0
    for i in range(lo, hi):
        g = grad[i]
        if maximize:
            g = -g
        p = params[i]
        if decay_mode == 1:
            g = g + p * decay
        elif decay_mode == 2:
            p = p * decay
        m = exp_avg[i]
        # torch: exp_avg.lerp_(grad, 1 - beta1), i.e. m + w * (g - m)
        new_m = (g - m) * one_minus_beta1 + m
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
        if not (np.isfinite(new_p) and np.isfinite(new_m) and np.isfinite(new_v)):
            not_finite += 1
    return not_finite


@numba.njit(cache=True, nogil=True, parallel=True)
def _update_blocks(
    size: int,
    block: int,
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
    beta2: Any,
    one_minus_beta2: Any,
    bias_correction2_sqrt: Any,
    eps: Any,
    neg_step_size: Any,
    amsgrad: bool,
) -> int:
    blocks = (size + block - 1) // block
    not_finite = 0
    for b in numba.prange(blocks):
        not_finite += _update_range(
            b * block,
            min(size, (b + 1) * block),
            params,
            exp_avg,
            exp_avg_sq,
            max_exp_avg_sq,
            grad,
            out_params,
            out_exp_avg,
            out_exp_avg_sq,
            out_max,
            maximize,
            decay_mode,
            decay,
            one_minus_beta1,
            beta2,
            one_minus_beta2,
            bias_correction2_sqrt,
            eps,
            neg_step_size,
            amsgrad,
        )
    return not_finite


def fused_update(*arrays: Any, size: int, scalars: tuple[Any, ...]) -> int:
    """Run the kernel over ``size`` elements; the number of non-finite results.

    ``arrays`` are θ, m, v, max v (in), the gradient, θ, m, v, max v (out); ``scalars``
    the flags and coefficients, in the kernel's order.
    """
    if size < PARALLEL_THRESHOLD:
        return int(_update_range(0, size, *arrays, *scalars))
    with _parallel_lock:
        return int(_update_blocks(size, _BLOCK, *arrays, *scalars))
