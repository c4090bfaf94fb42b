"""Synchronous rounds: K workers' gradients averaged into one Adam step, as DDP does.

A contribution is stored in the session's open round before it is acknowledged
(``lua/contribute.lua``): the script checks that it was computed at the round's base
step, records its Idempotency-Key, and numbers it. The request that completes the round
closes it at once; a round past its deadline, or sealed by a closer that died, is
closed by whichever waiter sees it first (``lua/seal.lua``), on any replica. Closing
reads the contributions, sums them in their recorded order into the samples-weighted
mean, steps, and logs the mean as the round's step with the same commit that drops the
round (``lua/append.lua``): a replay gives the same bits, and a round closes once.
Waiters learn of the close through the step notifications, bounded in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adamhub_service import errors
from adamhub_service.model.log import Contribution
from adamhub_service.model.outcomes import (
    ContributeOutcome,
    IdempotencyClaim,
    IdempotencyRecord,
    RoundView,
    WriteStatus,
)
from adamhub_service.model.records import SessionRecord, new_write_id
from adamhub_service.model.repositories import RoundRepository, SessionRepository
from adamhub_service.model.settings import RoundRule
from adamhub_service.observability.metrics import Metrics
from adamhub_service.optim import FloatArray
from adamhub_service.steps.commit import Commit, Report
from adamhub_service.steps.idempotency import gradient_digest
from adamhub_service.steps.staleness import stale_gradient
from adamhub_service.steps.values import RoundPending, StepRequest, StepResult, compute_step

# A round sealed for closing that has not closed after this long is closed by another
# waiter: its closer died.
CLOSE_GRACE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Contributed:
    """A contribution that is in: its session, the step its round will produce,
    whether an earlier request with its Idempotency-Key put it in, and the round as it
    left it when it did not close it, or the record its close committed."""

    session_id: str
    rule: RoundRule
    round_step: int
    replayed: bool
    pending: RoundView | None = None
    # The record the close this contribution made committed (no read to answer).
    closed: SessionRecord | None = None


class RoundService:
    """Contributions to the rounds of rounds sessions, and the closing of rounds."""

    def __init__(
        self,
        store: SessionRepository,
        rounds: RoundRepository,
        metrics: Metrics,
        *,
        idempotency_ttl_seconds: float,
        close_grace_seconds: float = CLOSE_GRACE_SECONDS,
    ) -> None:
        self._store = store
        self._rounds = rounds
        self._metrics = metrics
        self._idempotency_ttl_ms = int(idempotency_ttl_seconds * 1000)
        self._grace_ms = int(close_grace_seconds * 1000)
        self._closing: dict[str, asyncio.Task[SessionRecord | None]] = {}
        # The gradients this process took for each session's open round (its base, and
        # write id → gradient): its closer reads only the others from the store.
        self._held: dict[str, tuple[int, dict[str, FloatArray]]] = {}

    async def contribute(
        self,
        record: SessionRecord,
        gradient: FloatArray,
        *,
        logged: FloatArray | None = None,
        request: StepRequest,
    ) -> Contributed:
        """Add ``gradient`` (validated, in the session dtype; ``logged`` as it arrived
        when narrower) for the request's samples to the open round of ``record``'s
        session; close the round when this completes it. ``answer`` waits for the round.

        A gradient for another step than the open round's is refused (409
        ``stale-gradient``), after waiting up to the request's wait for a full round to
        close; a retry is answered as its first request was.
        """
        session_id = record.id
        idempotency_key, settings = request.idempotency_key, request.settings
        base_step, samples, report = request.base_step, request.samples, request.report
        wait_seconds = request.wait_seconds
        wire = gradient if logged is None else logged
        digest = gradient_digest(gradient) if idempotency_key is not None else ""
        claim = None
        if idempotency_key is not None:
            # The script records the round's step, which only it knows.
            claim = IdempotencyClaim(
                idempotency_key, IdempotencyRecord(digest, 0), self._idempotency_ttl_ms
            )
        config = None if settings is None else settings.applied_to(record.optimizer)

        write_id = ""

        async def attempt() -> ContributeOutcome | None:
            nonlocal write_id
            write_id = new_write_id()
            contribution = Contribution(
                write_id, wire.dtype.name, wire.nbytes, samples, report.loss, config,
                request.segments,
            )  # fmt: skip
            outcome = await self._rounds.contribute(
                record, contribution, wire, base_step=base_step, idempotency=claim
            )
            return None if outcome.status is WriteStatus.EXPIRED else outcome

        outcome = await self._store.until_committed(attempt)
        rule = record.settings.rounds
        assert rule is not None, "contributions go to rounds sessions"
        replayed = False
        if outcome.status is WriteStatus.GONE:
            raise errors.SessionNotFound(session_id)
        if outcome.status is WriteStatus.STALE:
            self._metrics.contributions.labels("stale").inc()
            self._metrics.stale.labels("round").inc()
            raise _stale(base_step, outcome.base)
        if outcome.status is WriteStatus.SEALED:
            # The round is full: this gradient is for a step that is about to pass.
            seen, _ = await self.wait_for_step(session_id, outcome.base + 1, wait_seconds)
            self._metrics.contributions.labels("stale").inc()
            self._metrics.stale.labels("round").inc()
            raise _stale(base_step, seen.t if seen else outcome.base)
        if outcome.status is WriteStatus.REPLAYED:
            assert outcome.replay is not None
            if outcome.replay.digest != digest:
                raise errors.IdempotencyKeyReused(
                    "this Idempotency-Key was already used with a different gradient",
                    applied_t=outcome.replay.applied_t,
                )
            replayed = True
            round_step = outcome.replay.applied_t
            self._metrics.contributions.labels("replayed").inc()
        else:
            round_step = outcome.base + 1
            self._metrics.contributions.labels("taken").inc()
            self._hold(session_id, outcome.base, write_id, wire)
            if outcome.complete:
                closed = await self._close(
                    session_id, outcome.base, outcome.contributions, "complete"
                )
                return Contributed(session_id, rule, round_step, replayed, closed=closed)
            else:
                pending = RoundView(
                    WriteStatus.COMMITTED,
                    contributions=outcome.contributions,
                    samples=outcome.samples,
                    first_ms=outcome.first_ms,
                    now_ms=outcome.now_ms,
                )
                return Contributed(session_id, rule, round_step, replayed, pending)
        return Contributed(session_id, rule, round_step, replayed)

    async def answer(
        self, contributed: Contributed, wait_seconds: float
    ) -> StepResult | RoundPending:
        """The round's step once it closes, or ``RoundPending`` after ``wait_seconds``
        (the contribution stays in)."""
        session_id, round_step = contributed.session_id, contributed.round_step
        pending = None
        if contributed.pending is not None:
            pending = (contributed.rule, contributed.pending)
        seen: SessionRecord | None
        view: RoundView | None = None
        if contributed.closed is not None and contributed.closed.t >= round_step:
            seen = contributed.closed  # its own close: the record it committed
        else:
            seen, view = await self.wait_for_step(
                session_id, round_step, wait_seconds, pending=pending
            )
        if seen is None:
            seen = await self._store.record(session_id)
        self._release(session_id, seen.t)
        if seen.t >= round_step:
            current, params = await self._store.params_of(seen)
            return StepResult(current, params, round_step, contributed.replayed)
        if seen.t < round_step - 1:
            raise errors.StaleGradient(
                f"the session went back to t={seen.t} (a rollback or reset) before "
                f"the round of step {round_step} closed; it was dropped with its "
                "contributions: fetch the parameters and compute the gradient again",
                t=seen.t,
            )
        if view is not None and view.dropped is not None:
            raise errors.RoundDropped(view.dropped)
        held = view.contributions if view is not None else 0
        held_samples = view.samples if view is not None else 0
        needed = contributed.rule.needed(held, held_samples)
        return RoundPending(seen.t, round_step, held, needed)

    async def wait_for_step(
        self,
        session_id: str,
        min_step: int,
        seconds: float,
        *,
        pending: tuple[RoundRule, RoundView] | None = None,
    ) -> tuple[SessionRecord | None, RoundView | None]:
        """Wait until the session's t is at least ``min_step``, or ``seconds`` have
        passed, closing the rounds that come due meanwhile (past their deadline, or
        sealed by a closer that died). Returns the record as last read (None when none
        was) and the open round as last seen.

        ``pending``: the session's rule and open round as the caller just left them
        (below ``min_step``): the first look at the store is skipped. A wait that ends
        with news of the step it waits for costs one read.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        record: SessionRecord | None = None
        rule, view = pending if pending is not None else (None, None)
        look = pending is None
        while True:
            if look:
                record = await self._store.record(session_id)
                if record.t >= min_step:
                    return record, view
                rule = record.settings.rounds
                if rule is not None:
                    view = await self._rounds.seal(session_id, record.t, grace_ms=self._grace_ms)
                    if view.status is WriteStatus.GONE:
                        raise errors.SessionNotFound(session_id)
                    if view.status is WriteStatus.CONFLICT:
                        continue  # t moved on under the look
                    if view.status is WriteStatus.DROPPED:
                        return record, view
                    if view.sealed:
                        needed = rule.needed(view.contributions, view.samples)
                        how = "complete" if needed == 0 else "deadline"
                        await self._close(session_id, record.t, view.contributions, how)
                        continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return record, view
            pause = remaining
            if rule is not None and view is not None:
                pause = min(pause, self._due_in(rule, view))
            wake = await self._store.notified(session_id, pause)
            if wake.news:
                # t has moved, most likely to min_step. A commit of this process says
                # where to itself; else read the record alone first.
                committed = wake.record
                fresh = committed is not None and committed.t >= min_step
                record = committed if fresh else await self._store.record(session_id)
                assert record is not None
                if record.t >= min_step:
                    return record, view
            look = True

    def _hold(self, session_id: str, base: int, write_id: str, gradient: FloatArray) -> None:
        held = self._held.get(session_id)
        if held is None or held[0] != base:
            held = self._held[session_id] = (base, {})
        held[1][write_id] = gradient

    def _release(self, session_id: str, t: int) -> None:
        """Forget the gradients held for a round the session is no longer at."""
        held = self._held.get(session_id)
        if held is not None and held[0] != t:
            del self._held[session_id]

    def _due_in(self, rule: RoundRule, view: RoundView) -> float:
        """Seconds until the open round may need this waiter: its deadline, or the end of
        its closer's grace (at least a few ms; the notifier caps the wait at a second)."""
        due = float("inf")
        if view.sealed_ms:
            due = view.sealed_ms + self._grace_ms - view.now_ms
        elif rule.timeout_seconds is not None and view.contributions:
            due = view.first_ms + rule.timeout_seconds * 1000 - view.now_ms
        return max(due / 1000, 0.005)

    async def _close(
        self, session_id: str, base: int, contributions: int, how: str
    ) -> SessionRecord | None:
        """Close the round stepping from ``base`` with its ``contributions``: once per
        process at a time, and to the end even when the request that started it goes.
        The record the close committed (None when another closed it)."""
        task = self._closing.get(session_id)
        if task is None or task.done():
            task = asyncio.create_task(self._close_round(session_id, base, contributions, how))
            self._closing[session_id] = task
            task.add_done_callback(lambda done: self._forget(session_id, done))
        return await asyncio.shield(task)

    def _forget(self, session_id: str, task: asyncio.Task[SessionRecord | None]) -> None:
        if self._closing.get(session_id) is task:
            del self._closing[session_id]

    async def _drop(
        self, session_id: str, base: int, contributions: int, exc: errors.NonFiniteUpdate
    ) -> None:
        """Drop the round whose step is not finite and raise ``RoundDropped`` (its
        waiters raise it too); return when the round moved on before it."""
        why = (
            f"the round of step {base + 1} was dropped with its {contributions} "
            f"contributions: {exc.detail.replace('this gradient', 'their mean')}; the next "
            f"round starts again from t={base}"
        )
        status = await self._rounds.drop_round(session_id, base, contributions, why)
        if status is WriteStatus.GONE:
            raise errors.SessionNotFound(session_id)
        if status is WriteStatus.CONFLICT:
            return  # the round moved on: look again
        self._metrics.rounds.labels("dropped").inc()
        raise errors.RoundDropped(why)

    async def _close_round(
        self, session_id: str, base: int, contributions: int, how: str
    ) -> SessionRecord | None:
        async def attempt() -> tuple[SessionRecord | None] | None:
            # The cached state (a hint: the commit is fenced by rev) when it is the
            # round's base; else the store's.
            current = await self._store.load(session_id)
            if current.state.step != base:
                current = await self._store.state(session_id)
            if current.state.step != base:
                return (None,)  # closed already (or the session went elsewhere)
            held = self._held.get(session_id)
            known = held[1] if held is not None and held[0] == base else None
            taken = await self._rounds.round_contributions(current.record, contributions, known)
            if taken is None:
                return None
            record = current.record
            optimizer = record.optimizer
            for contribution, _ in taken:
                if contribution.config is not None:
                    optimizer = contribution.config
            rule = record.settings.rounds
            assert rule is not None, "a rounds session has its rule"
            mean, present = round_gradient(rule, record, taken)
            try:
                with self._metrics.step_phases.labels("math").time():
                    state = await compute_step(current.state, mean, optimizer, present)
            except errors.NonFiniteUpdate as exc:
                await self._drop(session_id, base, contributions, exc)  # raises, when dropped
                return None
            commit = Commit(current)
            loss = _mean_loss([contribution for contribution, _ in taken])
            commit.add(state, optimizer, mean, mean, report=Report(loss=loss), segments=present)
            outcome = await commit.run(
                self._store,
                self._metrics,
                idempotency_ttl_ms=self._idempotency_ttl_ms,
                round_contributions=contributions,
            )
            if outcome.status is WriteStatus.COMMITTED:
                assert outcome.rev is not None
                self._release(session_id, state.step)
                self._metrics.rounds.labels(how).inc()
                return (commit.answered(0, outcome.rev)[0],)
            return None

        (closed,) = await self._store.until_committed(attempt)
        return closed


def round_gradient(
    rule: RoundRule, record: SessionRecord, taken: Sequence[tuple[Contribution, FloatArray]]
) -> tuple[FloatArray, tuple[int, ...] | None]:
    """The round's gradient, and the segments it carries (None: all): each segment is
    aggregated over the contributions that carry it (partial steps), in their order."""
    contributions = [(contribution.samples, gradient) for contribution, gradient in taken]
    if all(contribution.segments is None for contribution, _ in taken):
        return rule.aggregated(contributions, record.dtype), None
    ranges = record.optimizer.tensor_ranges(record.size)
    every = tuple(range(len(ranges)))
    # Where each contribution holds each of its segments.
    offsets: list[dict[int, int]] = []
    for contribution, _ in taken:
        where, offset = {}, 0
        for index in contribution.segments or every:
            where[index] = offset
            offset += ranges[index][1] - ranges[index][0]
        offsets.append(where)
    carried = sorted({index for where in offsets for index in where})
    parts = []
    for index in carried:
        length = ranges[index][1] - ranges[index][0]
        holders = [
            (samples, gradient[where[index] : where[index] + length])
            for (samples, gradient), where in zip(contributions, offsets, strict=True)
            if index in where
        ]
        parts.append(rule.aggregated(holders, record.dtype))
    present = None if len(carried) == len(ranges) else tuple(carried)
    return np.concatenate(parts), present


def _mean_loss(contributions: Sequence[Contribution]) -> float | None:
    """The samples-weighted mean of the losses the contributions reported, if any did."""
    reported = [(c.samples, c.loss) for c in contributions if c.loss is not None]
    if not reported:
        return None
    total = sum(n * loss for n, loss in reported)
    return float(total) / sum(n for n, _ in reported)


def _stale(base_step: int | None, t: int) -> errors.StaleGradient:
    return stale_gradient(base_step, t, f"the open round steps from t={t}")
