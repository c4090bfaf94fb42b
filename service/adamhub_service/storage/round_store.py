"""The open round of a rounds session in Redis: contributions taken (stored, or held
in a process's memory), sealed, stored after all, dropped (``lua/contribute.lua``,
``seal.lua``, ``spill.lua``, ``drop.lua``), all in the session's slot."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import redis.asyncio as redis

from adamhub_service.errors import StoreUnavailable
from adamhub_service.model.log import GRADIENT, Contribution
from adamhub_service.model.outcomes import (
    ContributeOutcome,
    Holder,
    IdempotencyClaim,
    IdempotencyRecord,
    RoundView,
    WriteStatus,
)
from adamhub_service.model.records import SessionRecord
from adamhub_service.optim import FloatArray
from adamhub_service.storage.chunks import Chunk, VectorChunks, chunked
from adamhub_service.storage.encoding import chunks_of, text
from adamhub_service.storage.errors import unavailable_on_error
from adamhub_service.storage.keyspace import (
    chunk_keys,
    idempotency_index_key,
    idempotency_key,
    meta_key,
    round_key,
)
from adamhub_service.storage.scripts import register


class RedisRoundRepository:
    """Contributions to sessions' open rounds."""

    def __init__(self, client: redis.Redis, chunks: VectorChunks) -> None:
        self._redis = client
        self._chunks = chunks
        self._contribute = register(client, "contribute")
        self._seal = register(client, "seal")
        self._spill = register(client, "spill")
        self._drop = register(client, "drop")

    async def contribute(
        self,
        record: SessionRecord,
        contribution: Contribution,
        gradient: FloatArray,
        *,
        base_step: int | None,
        idempotency: IdempotencyClaim | None,
        holder: Holder | None = None,
    ) -> ContributeOutcome:
        """Add a contribution (``gradient``, in its entry's dtype) to the session's open
        round, if it is computed at that round's base (``None``: whichever is open):
        stored, or with ``holder`` held in that process's memory (nothing is written but
        the entry; ``ELSEWHERE`` when another process holds some of the round).
        ``idempotency.record``'s step is ignored: the script records the round's."""
        meta = meta_key(record.id)
        idem = meta if idempotency is None else idempotency_key(record.id, idempotency.key)
        chunks = [] if holder is not None else self._gradient_chunks(record, contribution, gradient)
        args: list[Any] = [
            "" if base_step is None else base_step,
            contribution.encode(),
            contribution.samples,
            "" if idempotency is None else idempotency.record.digest,
            0 if idempotency is None else idempotency.ttl_ms,
            "" if holder is None else holder.token,
            0 if holder is None else holder.lease_ms,
        ]
        keys = [meta, idempotency_index_key(record.id), idem]
        if chunks:
            reply = await self._chunks.write_then_run(
                self._contribute, keys, chunks, args, spread=record.spread
            )
        else:
            async with unavailable_on_error(write=True):
                reply = await self._contribute(keys=keys, args=args)
        status = WriteStatus(int(reply[0]))
        if status is WriteStatus.COMMITTED:
            base, n, samples, complete, first_ms, now_ms = (int(part) for part in reply[1:7])
            return ContributeOutcome(status, base, n, samples, complete == 1, first_ms, now_ms)
        if status is WriteStatus.REPLAYED:
            return ContributeOutcome(status, replay=IdempotencyRecord.decode(text(reply[1])))
        if status in (WriteStatus.STALE, WriteStatus.SEALED, WriteStatus.ELSEWHERE):
            return ContributeOutcome(status, base=int(reply[1]))
        return ContributeOutcome(status)

    async def seal(
        self, session_id: str, base: int, *, grace_ms: int, holder: Holder | None = None
    ) -> RoundView:
        """The open round stepping from ``base``, sealed for this caller to close when
        it is due (see ``lua/seal.lua``); a look by its ``holder`` renews its lease."""
        token, lease_ms = ("", 0) if holder is None else (holder.token, holder.lease_ms)
        args: list[Any] = [base, grace_ms, token, lease_ms]
        async with unavailable_on_error(write=True):
            reply = await self._seal(keys=[meta_key(session_id)], args=args)
        head = int(reply[0])
        if head == 1:
            return RoundView(WriteStatus.COMMITTED, True, int(reply[1]), int(reply[2]))
        if head == 0:
            n, samples, first_ms, sealed_ms, now_ms, lease_ms, held, holding = (
                int(part) for part in reply[1:9]
            )
            return RoundView(
                WriteStatus.COMMITTED,
                False,
                n,
                samples,
                first_ms,
                sealed_ms,
                now_ms,
                lease_ms=lease_ms,
                held=held,
                holding=holding == 1,
            )
        if head == WriteStatus.DROPPED:
            return RoundView(WriteStatus.DROPPED, dropped=text(reply[1]))
        return RoundView(WriteStatus(head))

    async def spill(
        self,
        record: SessionRecord,
        base: int,
        holder: Holder,
        contribution: Contribution,
        gradient: FloatArray,
    ) -> WriteStatus:
        """Store the contribution ``holder`` holds in the round at ``base`` (see
        ``lua/spill.lua``): COMMITTED, or CONFLICT when the round no longer holds it."""
        chunks = self._gradient_chunks(record, contribution, gradient)
        reply = await self._chunks.write_then_run(
            self._spill,
            [meta_key(record.id)],
            chunks,
            [base, holder.token, contribution.write_id],
            spread=record.spread,
        )
        return WriteStatus(int(reply[0]))

    def _gradient_chunks(
        self, record: SessionRecord, contribution: Contribution, gradient: FloatArray
    ) -> list[Chunk]:
        keys = chunk_keys(
            record.id,
            contribution.write_id,
            (GRADIENT,),
            chunks_of(record, contribution),
            spread=record.spread,
        )
        return chunked(keys, gradient, record.chunk_elements)

    async def drop_round(
        self, session_id: str, base: int, contributions: int, why: str
    ) -> WriteStatus:
        """Drop the open round at ``base`` if it still holds ``contributions``, noting
        ``why`` for its waiters (see ``lua/drop.lua``)."""
        async with unavailable_on_error(write=True):
            reply = await self._chunks.acks.run(
                self._redis, self._drop, [meta_key(session_id)], [base, contributions, why]
            )
        # A spread session's dropped gradients are in its garbage (a rare path: looked
        # at for every session).
        with contextlib.suppress(StoreUnavailable):
            await self._chunks.garbage.collect(session_id)
        return WriteStatus(int(reply[0]))

    async def round_contributions(
        self,
        record: SessionRecord,
        contributions: int,
        known: Mapping[str, FloatArray] | None = None,
    ) -> list[tuple[Contribution, FloatArray]] | None:
        """The first ``contributions`` of the round stepping from ``record.t``, in their
        order, with their gradients (those in ``known``, by write id, are not read);
        None when the round is no longer that one, or holds one in the memory of
        another process."""
        async with unavailable_on_error():
            raw = await self._redis.hgetall(round_key(record.id))
        fields = {text(name): value for name, value in raw.items()}
        if text(fields.get("base", b"")) != str(record.t):
            return None
        entries = [fields.get(str(i)) for i in range(1, contributions + 1)]
        if any(entry is None for entry in entries):
            return None
        taken = [Contribution.decode(entry) for entry in entries if entry is not None]
        known = known or {}
        held_elsewhere = [
            j
            for j, entry in enumerate(taken, start=1)
            if f"m{j}" in fields and entry.write_id not in known
        ]
        if held_elsewhere:
            return None
        gradients = [
            known.get(entry.write_id, np.empty(entry.elements, dtype=entry.dtype))
            for entry in taken
        ]
        targets = [
            (
                chunk_keys(
                    record.id,
                    entry.write_id,
                    (GRADIENT,),
                    chunks_of(record, entry),
                    spread=record.spread,
                ),
                gradient,
            )
            for entry, gradient in zip(taken, gradients, strict=True)
            if entry.write_id not in known
        ]
        if not await self._chunks.read_into(record, targets):
            return None
        return list(zip(taken, gradients, strict=True))
