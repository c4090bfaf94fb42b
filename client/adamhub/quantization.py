"""8-bit gradients with error feedback, for slow links.

The wire form is the service's ``int8-block4096``: ceil(n/4096) little-endian float32
scales (each block's largest magnitude), then n int8 values; element i arrives as
q[i] × scale[i // 4096] / 127, computed in float32 in that order — a quarter of
float32's bytes.

Rounding to 8 bits loses a little of every gradient. Error feedback keeps what was lost
(the gradient minus what the service will read) and adds it to the next gradient, so
that over steps nothing is lost, only delayed: training follows float32's closely, where
plain 8-bit rounding drifts. The residual is part of the optimizer's state
(``RemoteAdam.state_dict``), so a resumed run goes on with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

INT8 = "int8"
WIRE_NAME = "int8-block4096"
BLOCK = 4096
# Below this scale 127 / scale would overflow float32 (its largest is about 3.4e38).
TINY_SCALE = np.float32(1e-36)
LIFT = np.float32(2.0**100)
Float32s = npt.NDArray[np.float32]


def quantize(vector: npt.NDArray[Any]) -> tuple[Float32s, npt.NDArray[np.int8]]:
    """Block absmax quantization: each block's scale, and its values as int8 in
    [-127, 127], rounded to nearest (ties to even)."""
    values = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    blocks = _blocks(values)
    scales = np.array([np.abs(block).max(initial=0) for block in blocks[1:]], np.float32)
    if blocks[0].size:
        scales = np.concatenate([np.abs(blocks[0]).max(axis=1), scales]).astype(np.float32)
    quantized = np.empty(values.size, np.int8)
    full = blocks[0].size
    # Blocks whose scale is so small that 127 / scale overflows float32 are lifted by a
    # power of two first (exact): q = value / scale × 127 does not change.
    lift = np.where(scales < TINY_SCALE, LIFT, np.float32(1)).astype(np.float32)
    steps = np.float32(127) / (np.where(scales > 0, scales, np.float32(1)) * lift)
    lifted = bool(np.any(lift != 1))
    # In place, block by block: 127 / scale × value, rounded (it cannot pass ±127).
    whole = len(blocks[0])
    if lifted:
        scaled = blocks[0] * lift[:whole, None]
        scaled *= steps[:whole, None]
    else:
        scaled = blocks[0] * steps[:whole, None]
    np.rint(scaled, out=scaled)
    quantized[:full] = scaled.reshape(-1)
    if values.size > full:
        quantized[full:] = np.rint(values[full:] * lift[-1] * steps[-1])
    return scales, quantized


def dequantize(scales: Float32s, quantized: npt.NDArray[np.int8]) -> Float32s:
    """What the service reads: q × scale / 127, in float32."""
    values = quantized.astype(np.float32)
    full = values.size // BLOCK * BLOCK
    whole = values[:full].reshape(-1, BLOCK)
    whole *= scales[: len(whole), None]
    if values.size > full:
        values[full:] *= scales[-1]
    values /= np.float32(127)
    return values


def _blocks(values: Float32s) -> list[Float32s]:
    """The whole blocks as one (blocks, BLOCK) view, then the partial last one, if any."""
    full = values.size // BLOCK * BLOCK
    parts: list[Float32s] = [values[:full].reshape(-1, BLOCK)]
    if values.size > full:
        parts.append(values[full:])
    return parts


def wire_body(scales: Float32s, quantized: npt.NDArray[np.int8]) -> bytes:
    """The ``int8-block4096`` body."""
    return scales.astype("<f4").tobytes() + quantized.tobytes()


class ErrorFeedback:
    """The residual of 8-bit steps: ``encode`` sends gradient + residual and returns the
    body and the residual that remains once the step is taken."""

    def __init__(self, size: int, residual: npt.ArrayLike | None = None) -> None:
        self.residual: Float32s = (
            np.zeros(size, np.float32)
            if residual is None
            else np.array(residual, dtype=np.float32).reshape(size)
        )

    def encode(self, gradient: npt.NDArray[Any]) -> tuple[bytes, ErrorFeedback]:
        """The body for ``gradient`` (with the residual added), and the feedback after."""
        corrected = np.asarray(gradient, dtype=np.float32).reshape(-1) + self.residual
        scales, quantized = quantize(corrected)
        corrected -= dequantize(scales, quantized)
        return wire_body(scales, quantized), ErrorFeedback(self.residual.size, corrected)
