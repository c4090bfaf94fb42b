"""Vectors in Redis as chunks: written with a TTL before the script that commits them,
read back in bounded round trips.

No Redis value is ever large: a vector is cut into chunks of ``chunk_elements``
(raw little-endian bytes), and a round trip carries at most ``round_trip_bytes``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import redis.asyncio as redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from adamhub_service.errors import StoreUnavailable
from adamhub_service.model.outcomes import WriteStatus
from adamhub_service.model.records import SessionRecord
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import FloatArray
from adamhub_service.storage.acks import NO_ACKS, ReplicaAcks
from adamhub_service.storage.errors import unavailable_on_error

Chunk = tuple[str, memoryview]


def chunked(
    keys: Sequence[str], vector: FloatArray | npt.NDArray[np.int8], chunk_elements: int
) -> list[Chunk]:
    """A vector's little-endian bytes, cut into chunks named by ``keys``."""
    dtype = vector.dtype.newbyteorder("<")
    data = np.ascontiguousarray(vector, dtype=dtype).data.cast("B")
    step = chunk_elements * dtype.itemsize
    return [(key, data[i * step : (i + 1) * step]) for i, key in enumerate(keys)]


def _batches(chunks: Sequence[Chunk], limit: int) -> Iterator[list[Chunk]]:
    """Chunks in batches of at most ``limit`` bytes (at least one chunk each)."""
    batch: list[Chunk] = []
    size = 0
    for key, data in chunks:
        if batch and size + len(data) > limit:
            yield batch
            batch, size = [], 0
        batch.append((key, data))
        size += len(data)
    if batch:
        yield batch


class VectorChunks:
    """Writes chunks for a commit script and reads chunked vectors back."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        pending_write_ttl_ms: int,
        round_trip_bytes: int = 64 << 20,
        metrics: Metrics | None = None,
        acks: ReplicaAcks = NO_ACKS,
    ) -> None:
        self._redis = client
        self._pending_ttl_ms = pending_write_ttl_ms
        self._round_trip_bytes = round_trip_bytes
        self._metrics = metrics
        self._acks = acks

    @property
    def acks(self) -> ReplicaAcks:
        """The replicas that confirm each write."""
        return self._acks

    async def read_into(
        self, record: SessionRecord, targets: Sequence[tuple[Sequence[str], FloatArray]]
    ) -> bool:
        """Read chunked vectors into arrays; False when a chunk has gone."""
        plan = [
            (key, vector, i * record.chunk_elements)
            for keys, vector in targets
            for i, key in enumerate(keys)
        ]
        per_trip = max(1, self._round_trip_bytes // (record.chunk_elements * 8))
        async with unavailable_on_error():
            for first in range(0, len(plan), per_trip):
                batch = plan[first : first + per_trip]
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, _, _ in batch:
                        pipe.get(key)
                    found: list[bytes | None] = await pipe.execute()
                for (_, vector, start), chunk in zip(batch, found, strict=True):
                    if chunk is None:
                        return False
                    dtype = vector.dtype.newbyteorder("<")
                    part = np.frombuffer(chunk, dtype=dtype)
                    vector[start : start + part.size] = part
        return True

    async def write_then_run(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        chunks: Sequence[Chunk],
        args: Sequence[Any],
    ) -> Any:
        """Write ``chunks`` with a TTL, then run ``script`` with them after ``keys``.

        The chunks go in round trips of at most ``round_trip_bytes``, the last one
        carrying the script, whose reply this returns. Unless it committed, the chunks
        are deleted again. A store failure before the script was sent is
        ``StoreUnavailable``; after, ``OutcomeUnknown``.
        """
        batches = list(_batches(chunks, self._round_trip_bytes))
        written: list[str] = []
        # Chunks are deleted when the commit surely did not happen; when its outcome is
        # unknown they stay: persisted if it happened, expiring if it did not.
        discard = True
        try:
            async with unavailable_on_error():
                for batch in batches[:-1]:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for key, data in batch:
                            pipe.set(key, data, px=self._pending_ttl_ms)
                            written.append(key)
                        await pipe.execute()
            last = batches[-1] if batches else []
            all_keys = [*keys, *written, *(key for key, _ in last)]
            discard = False
            async with (
                unavailable_on_error(write=True),
                self._redis.pipeline(transaction=False) as pipe,
            ):
                for key, data in last:
                    pipe.set(key, data, px=self._pending_ttl_ms)
                    written.append(key)
                # A plain EVALSHA: redis-py's Script in a pipeline would add a SCRIPT
                # EXISTS round trip to every commit.
                pipe.evalsha(script.sha, len(all_keys), *all_keys, *args)
                waited = self._acks.add_wait(self._redis, pipe, keys[0])
                replies = await pipe.execute(raise_on_error=False)
                confirmed = replies.pop() if waited else None
                reply = replies[-1]
                if isinstance(reply, NoScriptError):
                    reply = await self._acks.run(self._redis, script, all_keys, args)
                    confirmed = None  # confirmed by that run
                discard = True  # an answer came: the outcome is known
                if self._metrics is not None:
                    self._metrics.store_written_bytes.inc(sum(len(data) for _, data in chunks))
                for failed in replies[:-1]:
                    if isinstance(failed, Exception):
                        # The script found those chunks missing and committed nothing.
                        raise failed
                if isinstance(reply, Exception):
                    raise reply
            discard = WriteStatus(int(reply[0])) is not WriteStatus.COMMITTED
            if waited and confirmed is not None and not discard:
                self._acks.confirm(confirmed, waited)
            return reply
        finally:
            if discard:
                await self._discard(written)

    async def _discard(self, keys: Sequence[str]) -> None:
        """Unlink chunks that will never be committed (best effort)."""
        if not keys:
            return
        with contextlib.suppress(RedisError, OSError, StoreUnavailable):
            for first in range(0, len(keys), 1000):  # if not, they expire on their own
                await self._redis.unlink(*keys[first : first + 1000])
