"""Vectors in Redis as chunks: written with a TTL before the script that commits them,
read back in bounded round trips.

No Redis value is ever large: a vector is cut into chunks of ``chunk_elements``
(raw little-endian bytes), and a round trip carries at most ``round_trip_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import redis.asyncio as redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from adamhub_service.errors import OutcomeUnknown, StoreUnavailable
from adamhub_service.model.outcomes import WriteStatus
from adamhub_service.model.records import SessionRecord
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import FloatArray
from adamhub_service.storage.acks import NO_ACKS, ReplicaAcks, Waited
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.garbage import ChunkGarbage
from adamhub_service.storage.keyspace import session_of_meta
from adamhub_service.storage.topology import primary_of

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


class StagedChunks:
    """Chunks being written for a commit script that will run later (``stage``): the
    script's round trip then carries no vector. Its owner hands it to
    ``write_then_run``, or else ``abandon``s it."""

    def __init__(
        self, owner: VectorChunks, session_id: str, chunks: Sequence[Chunk], spread: bool
    ) -> None:
        self.session_id = session_id
        self.names = [key for key, _ in chunks]
        self.nbytes = sum(len(data) for _, data in chunks)
        self.spread = spread
        # The spread batch the chunks were registered as ("" when not spread).
        self._written: asyncio.Task[str] = asyncio.create_task(owner.write_staged(self, chunks))
        self._owner = owner

    async def written(self) -> str:
        """Return once every chunk is written (the spread batch's name); a store failure
        is ``StoreUnavailable``: nothing was committed."""
        return await asyncio.shield(self._written)

    async def abandon(self) -> None:
        """Delete the chunks, once their writes are over (a commit never names them)."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self._written)
        await self._owner.discard_staged(self, self._batch())

    def _batch(self) -> str | None:
        """The spread batch, when its registration is known."""
        task = self._written
        if not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()


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
        self.garbage = ChunkGarbage(client, pending_write_ttl_ms=pending_write_ttl_ms)

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

    def stage(self, session_id: str, chunks: Sequence[Chunk], *, spread: bool) -> StagedChunks:
        """Start writing ``chunks`` (a session's, spread or not) for a script that runs
        later with ``write_then_run(…, staged=…)``: a large vector travels while its
        step is computed."""
        return StagedChunks(self, session_id, chunks, spread)

    async def write_staged(self, staged: StagedChunks, chunks: Sequence[Chunk]) -> str:
        """Write staged chunks: with a TTL; a spread session's registered as a batch
        first (its name is returned)."""
        if staged.spread:
            return await self._write_spread(staged.session_id, chunks)
        await self._write_pending(_batches(chunks, self._round_trip_bytes), [])
        return ""

    async def _write_pending(self, batches: Iterable[list[Chunk]], written: list[str]) -> None:
        """SET chunks with the pending TTL, a round trip a batch, each key added to
        ``written`` as it is sent."""
        async with unavailable_on_error():
            for batch in batches:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, data in batch:
                        pipe.set(key, data, px=self._pending_ttl_ms)
                        written.append(key)
                    await pipe.execute()

    async def discard_staged(self, staged: StagedChunks, batch: str | None) -> None:
        """Delete staged chunks no script committed."""
        if not staged.spread:
            await self._discard(staged.names)
        elif batch is not None:
            await self.garbage.abandon(staged.session_id, batch, staged.names)
        # A spread write that failed before its batch was known: its batch, if
        # registered, is swept with a dead writer's (garbage.py).

    async def write_then_run(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        chunks: Sequence[Chunk],
        args: Sequence[Any],
        *,
        spread: bool = False,
        staged: StagedChunks | None = None,
    ) -> Any:
        """Write ``chunks`` with a TTL, then run ``script`` with them after ``keys``.

        The chunks go in round trips of at most ``round_trip_bytes``, the last one
        carrying the script, whose reply this returns. Unless it committed, the chunks
        are deleted again. A store failure before the script was sent is
        ``StoreUnavailable``; after, ``OutcomeUnknown``. ``spread``: the chunks are a
        spread session's (``garbage.py``). ``staged``: the chunks (``chunks`` is then
        empty) were written by ``stage``; the script's round trip carries none.
        """
        if staged is not None:
            return await self._run_staged(script, keys, staged, args)
        if spread and chunks:
            return await self._write_spread_then_run(script, keys, chunks, args)
        return await self._run_after(script, keys, chunks, args, [])

    async def _run_staged(
        self, script: AsyncScript, keys: Sequence[str], staged: StagedChunks, args: Sequence[Any]
    ) -> Any:
        try:
            batch = await staged.written()
        except BaseException:
            await staged.abandon()
            raise
        if self._metrics is not None:
            self._metrics.store_written_bytes.inc(staged.nbytes)
        if staged.spread:
            session_id, names = staged.session_id, staged.names
            return await self._run_spread(script, keys, session_id, batch, names, args)
        return await self._run_after(script, keys, [], args, staged.names)

    async def _run_after(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        chunks: Sequence[Chunk],
        args: Sequence[Any],
        staged: Sequence[str],
    ) -> Any:
        """Write ``chunks`` (after the ``staged`` ones, written already), then run the
        script with all of them."""
        batches = list(_batches(chunks, self._round_trip_bytes))
        written: list[str] = list(staged)
        # Chunks are deleted when the commit surely did not happen; when its outcome is
        # unknown they stay: persisted if it happened, expiring if it did not.
        discard = True
        try:
            await self._write_pending(batches[:-1], written)
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

    async def _write_spread_then_run(
        self, script: AsyncScript, keys: Sequence[str], chunks: Sequence[Chunk], args: Sequence[Any]
    ) -> Any:
        """``write_then_run`` for chunks beyond the session's slot: register them as a
        batch, write them all (each primary its share, in parallel, confirmed by its
        replicas when acknowledged writes are on), then run the script, which claims the
        batch, and delete what it retired."""
        session_id = session_of_meta(keys[0])
        batch = await self._write_spread(session_id, chunks)
        if self._metrics is not None:
            self._metrics.store_written_bytes.inc(sum(len(data) for _, data in chunks))
        names = [key for key, _ in chunks]
        return await self._run_spread(script, keys, session_id, batch, names, args)

    async def _write_spread(self, session_id: str, chunks: Sequence[Chunk]) -> str:
        """Register ``chunks`` as a batch of the session's and write them: the batch."""
        names = [key for key, _ in chunks]
        batch = await self.garbage.register(session_id, names)
        try:
            for group in _batches(chunks, self._round_trip_bytes):
                async with unavailable_on_error(), self._redis.pipeline(transaction=False) as pipe:
                    for key, data in group:
                        pipe.set(key, data)
                    waits = self._add_waits(pipe, [key for key, _ in group])
                    replies = await pipe.execute()
                for index, waited in waits:
                    self._confirm_chunks(replies[index], waited)
        except BaseException:
            await self.garbage.abandon(session_id, batch, names)
            raise
        return batch

    async def _run_spread(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        session_id: str,
        batch: str,
        names: Sequence[str],
        args: Sequence[Any],
    ) -> Any:
        """Run the script that claims a written spread batch; the batch goes unless it
        committed, and what the commit retired is collected."""
        discard = True
        try:
            async with unavailable_on_error(write=True):
                reply = await self._acks.run(self._redis, script, [*keys, batch], args)
            discard = WriteStatus(int(reply[0])) is not WriteStatus.COMMITTED
        finally:
            if discard:
                await self.garbage.abandon(session_id, batch, names)
        if not discard:
            # Committed: what it retired goes now, or at the next sweep.
            with contextlib.suppress(StoreUnavailable):
                await self.garbage.collect(session_id)
        return reply

    def _add_waits(self, pipe: Any, keys: Sequence[str]) -> list[tuple[int, Waited]]:
        """A ``WAIT`` at the end of ``pipe`` for each primary that takes some of ``keys``,
        with the index of its reply."""
        if not self._acks.replicas:
            return []
        by_node: dict[str, str] = {}
        for key in keys:
            node = primary_of(self._redis, key)
            by_node.setdefault("" if node is None else node.name, key)
        waits = []
        for index, key in enumerate(by_node.values(), start=len(keys)):
            waited = self._acks.add_wait(self._redis, pipe, key)
            assert waited is not None
            waits.append((index, waited))
        return waits

    def _confirm_chunks(self, confirmed: Any, waited: Waited) -> None:
        """Raise ``StoreUnavailable`` unless the replicas confirmed chunks (not yet
        committed: nothing changed)."""
        try:
            self._acks.confirm(confirmed, waited)
        except OutcomeUnknown as exc:
            raise StoreUnavailable(
                "the store's replicas did not confirm the write in time; nothing was changed"
            ) from exc

    async def _discard(self, keys: Sequence[str]) -> None:
        """Unlink chunks that will never be committed (best effort)."""
        if not keys:
            return
        with contextlib.suppress(RedisError, OSError, StoreUnavailable):
            for first in range(0, len(keys), 1000):  # if not, they expire on their own
                await self._redis.unlink(*keys[first : first + 1000])
