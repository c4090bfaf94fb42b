"""Every HTTP header adamhub reads or writes, named once; and the parsers of the
request headers that carry values (each refuses a bad value with 422 naming it).

The SDK sends the same names; a test checks them against the OpenAPI document.
"""

from __future__ import annotations

import itertools
import math
import re

from adamhub_service import errors
from adamhub_service.model.settings import MAX_SAMPLES
from adamhub_service.observability.logs import REQUEST_ID_HEADER

# Request headers.
IDEMPOTENCY_KEY = "Idempotency-Key"
DTYPE = "Adamhub-Dtype"  # also on answers: the dtype of a binary vector
ACCEPT_DTYPE = "Adamhub-Accept-Dtype"  # the dtype a binary answer is asked for in
SETTINGS = "Adamhub-Optimizer"
BASE_STEP = "Adamhub-Base-Step"
SAMPLES = "Adamhub-Samples"
LOSS = "Adamhub-Loss"
WORKER = "Adamhub-Worker"
SEGMENTS = "Adamhub-Segments"
PREFER = "Prefer"
LAST_EVENT_ID = "Last-Event-ID"
# Answer headers.
STEP = "Adamhub-Step"
APPLIED_STEP = "Adamhub-Applied-Step"
REPLAYED = "Idempotent-Replayed"
RETRY_AFTER = "Retry-After"
RATE_LIMIT = "RateLimit"
RATE_LIMIT_POLICY = "RateLimit-Policy"
REQUEST_ID = REQUEST_ID_HEADER  # sent or made per request, echoed (observability/logs.py)

WORKER_PATTERN = re.compile(r"^[\x21-\x7e]([\x20-\x7e]{0,126}[\x21-\x7e])?$")


def base_step(header: str | None) -> int | None:
    """The Adamhub-Base-Step header as a step number, or 422 naming it."""
    if header is None:
        return None
    value = header.strip()
    if not value.isdigit() or len(value) > 18:
        raise errors.InvalidHeader(
            f"{BASE_STEP} must be a step number (t ≥ 0), not {header!r}", header=BASE_STEP
        )
    return int(value)


def samples(header: str | None) -> int:
    """The Adamhub-Samples header as a count (default 1), or 422 naming it."""
    if header is None:
        return 1
    value = header.strip()
    if not value.isdigit() or len(value) > 13 or not 1 <= int(value) <= MAX_SAMPLES:
        raise errors.InvalidHeader(
            f"{SAMPLES} must be a whole number of samples from 1 to {MAX_SAMPLES}, not {header!r}",
            header=SAMPLES,
        )
    return int(value)


def loss(header: str | None) -> float | None:
    """The Adamhub-Loss header as a finite number, or 422 naming it."""
    if header is None:
        return None
    try:
        value = float(header.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise errors.InvalidHeader(f"{LOSS} must be a finite number, not {header!r}", header=LOSS)
    return value


def worker(header: str | None, default: str) -> str:
    """Who sent the step: the Adamhub-Worker header (422 when malformed), else ``default``."""
    if header is None:
        return default
    if not WORKER_PATTERN.fullmatch(header):
        raise errors.InvalidHeader(
            f"{WORKER} must be 1 to 128 printable ASCII characters, not {header!r}",
            header=WORKER,
        )
    return header


def preferred_wait(header: str | None, default: float) -> float:
    """The seconds a ``Prefer: wait=N`` header asks for (RFC 7240), else ``default``."""
    if header is None:
        return default
    for preference in header.replace(";", ",").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return default  # a preference the server cannot honour is ignored
            if math.isfinite(seconds) and seconds >= 0:
                return seconds
    return default


def segments(header: str | None) -> tuple[int, ...] | None:
    """The Adamhub-Segments header (a partial step: the indices of the segments its body
    holds, increasing, comma-separated), or 422 naming it."""
    if header is None:
        return None
    parts = [part.strip() for part in header.split(",")]
    if not all(part.isdigit() and len(part) <= 9 for part in parts):
        raise errors.InvalidHeader(
            f"{SEGMENTS} must be segment indices separated by commas, such as 0,2,5, "
            f"not {header!r}",
            header=SEGMENTS,
        )
    indices = tuple(int(part) for part in parts)
    if any(b <= a for a, b in itertools.pairwise(indices)):
        raise errors.InvalidHeader(
            f"{SEGMENTS} must list each segment once, in increasing order, not {header!r}",
            header=SEGMENTS,
        )
    return indices
