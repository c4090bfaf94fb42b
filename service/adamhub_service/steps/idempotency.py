"""Idempotency-Keys: what makes a retried step the same step."""

from __future__ import annotations

import numpy as np
import xxhash

from adamhub_service import errors
from adamhub_service.optim import FloatArray


def is_valid_key(key: str) -> bool:
    """Whether ``key`` is 1 to 255 visible ASCII characters."""
    return 1 <= len(key) <= 255 and all("!" <= char <= "~" for char in key)


def checked_key(key: str | None) -> str | None:
    """An Idempotency-Key header as given, or 422 ``invalid-header``."""
    if key is not None and not is_valid_key(key):
        raise errors.InvalidHeader(
            "Idempotency-Key must be 1 to 255 visible ASCII characters", header="Idempotency-Key"
        )
    return key


def gradient_digest(gradient: FloatArray) -> str:
    """A fingerprint of a gradient's values in the session dtype.

    XXH3-128: it tells a retry from a different gradient sent with the same key (not an
    adversary, who could only confuse their own session), at ~20 GB/s where BLAKE2b
    ran at 0.6 and BLAKE3 at 1.5 here.
    """
    data = np.ascontiguousarray(gradient).data.cast("B")
    return xxhash.xxh3_128_hexdigest(data)
