"""8-bit gradients as they travel and as the log keeps them (``int8-block4096``).

The body is ceil(n / 4096) little-endian float32 scales, then n int8 values; element i
is q[i] × scale[i // 4096] / 127, computed in float32 in that order. The log keeps the
values and scales as they came (a quarter of float32's bytes) and dequantizes them the
same way on replay, so a replayed step gets the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

INT8_BLOCKS = "int8-block4096"
BLOCK_ELEMENTS = 4096


def blocks_of(elements: int) -> int:
    """How many blocks (scales) ``elements`` values have."""
    return -(-elements // BLOCK_ELEMENTS)


def wire_bytes(elements: int) -> int:
    """The bytes of ``elements`` values in this form."""
    return 4 * blocks_of(elements) + elements


def elements_in(nbytes: int) -> int:
    """How many values ``nbytes`` of this form hold (the inverse of ``wire_bytes``)."""
    return nbytes - 4 * -(-nbytes // (BLOCK_ELEMENTS + 4))


@dataclass(frozen=True, slots=True)
class Int8Blocks:
    """A gradient in 8-bit blocks: its int8 values and float32 scales."""

    values: npt.NDArray[np.int8]
    scales: npt.NDArray[np.float32]

    @classmethod
    def from_wire(cls, data: bytes | bytearray | memoryview, elements: int) -> Int8Blocks:
        """From a body of ``wire_bytes(elements)`` bytes."""
        blocks = blocks_of(elements)
        scales = np.frombuffer(data, dtype="<f4", count=blocks).astype(np.float32)
        values = np.frombuffer(data, dtype=np.int8, count=elements, offset=4 * blocks)
        return cls(values, scales)

    @property
    def nbytes(self) -> int:
        """Its bytes on the wire and in the log."""
        return wire_bytes(self.values.size)

    def dequantized(self) -> npt.NDArray[np.float32]:
        """q × scale / 127, in float32 (NaN or infinite where a scale is)."""
        per_element = np.repeat(self.scales, BLOCK_ELEMENTS)[: self.values.size]
        with np.errstate(invalid="ignore", over="ignore"):
            result: npt.NDArray[np.float32] = (
                self.values.astype(np.float32) * per_element
            ) / np.float32(127)
        return result


# A gradient as the log keeps it: in its wire dtype when that is narrower than the
# session's (it widens exactly), or in 8-bit blocks.
LoggedGradient = npt.NDArray[np.floating] | Int8Blocks


def logged_dtype(logged: LoggedGradient) -> str:
    """The dtype a log entry names for ``logged``."""
    return INT8_BLOCKS if isinstance(logged, Int8Blocks) else logged.dtype.name
