"""The bounded state cache of a process."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from adamhub_service.model.records import SessionRecord, new_session_id
from adamhub_service.model.stored import CachedSession
from adamhub_service.optim import AdamConfig, init_state
from adamhub_service.storage.cache import StateCache


def entry(size: int) -> CachedSession:
    config = AdamConfig()
    record = SessionRecord(
        id=new_session_id(), size=size, dtype="float32", chunk_elements=4, optimizer=config,
        t=0, rev=1, head="h", created_at="", updated_at="",
    )  # fmt: skip
    return CachedSession(record, init_state(np.zeros(size, np.float32), config), config)


def test_cache_evicts_least_recently_used_past_its_byte_bound() -> None:
    cache = StateCache(max_bytes=3 * 120)  # three sessions of 10 float32 × θ, m, v
    first, second, third, fourth = (entry(10) for _ in range(4))
    for item in (first, second, third):
        cache.put(item)
    assert cache.get(first.record.id) is first  # now the most recently used
    cache.put(fourth)
    assert cache.get(second.record.id) is None
    assert all(cache.get(e.record.id) is not None for e in (first, third, fourth))
    assert cache.nbytes == 360
    cache.put(entry(1000))  # larger than the whole cache: not kept
    assert cache.nbytes == 360
    cache.drop(first.record.id)
    assert cache.nbytes == 240


def test_a_session_larger_than_the_cache_is_told_once(caplog: pytest.LogCaptureFixture) -> None:
    cache = StateCache(max_bytes=120)
    big = entry(100)
    with caplog.at_level(logging.WARNING, logger="adamhub_service.storage"):
        cache.put(big)
        cache.put(big)
        cache.put(entry(5))
    told = [r.getMessage() for r in caplog.records]
    assert len(told) == 1
    assert big.record.id in told[0] and "ADAMHUB_CACHE_BYTES=120" in told[0]
    assert cache.get(big.record.id) is None
