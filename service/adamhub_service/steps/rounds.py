"""Synchronous rounds: K workers' gradients averaged into one Adam step, as DDP does.

A round's contributions meet in the memory of the process they reach (the round's
*holder*) while their workers wait for the answer: the store counts each (with its
Idempotency-Key, ``lua/contribute.lua``), but its gradient stays here. A worker that
gets no answer retries with the same key, so a contribution need not be durable before
its round closes, unless its worker is told it is in (202): then it is stored first
(``lua/spill.lua``). A contribution reaching another process (another replica, or
another worker process of one) is stored, and the holder reads it when it closes.

The request that completes the round closes it at once. A round past its deadline is
sealed by whichever process looks first and closed by its holder (or, when no process
holds any of it, by the one that sealed it; a closer that died is replaced after a
grace). The holder renews a lease each time it looks; contributions of a holder whose
lease lapsed (it died) are taken out, and their workers' retries bring them again.
Closing sums the contributions in their recorded order into the samples-weighted mean
(or a robust aggregate), steps, and logs the mean as the round's step with the same
commit that drops the round (``lua/append.lua``): a replay gives the same bits, and a
round closes once. The holder's waiters get the state its close committed (no read);
others learn of the close through the step notifications, bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from adamhub_service import errors
from adamhub_service.model.log import Contribution
from adamhub_service.model.outcomes import (
    ContributeOutcome,
    Holder,
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
# waiter: its closer died (rounds no process holds contributions of).
CLOSE_GRACE_SECONDS = 2.0
# A holder's lease on the contributions it holds: it renews it each time it looks at
# the round (at least every RENEW_SECONDS); past it, they are taken out of the round.
LEASE_SECONDS = 5.0
RENEW_SECONDS = 1.0
# How soon a holder looks again after the store failed to answer (a failover, a
# restart): it keeps its contributions meanwhile.
STORE_RETRY_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class _Ended:
    """How a round this process held contributions of ended for them: the session as
    it was then (None: they were taken out of the round, their holder's lease having
    lapsed), and the parameters, when this process's close committed them."""

    record: SessionRecord | None
    params: FloatArray | None = None


@dataclass(slots=True)
class _Held:
    """The contributions to one open round this process holds in memory, by write id
    (with their numbers in the round), the write ids of their Idempotency-Keys, and how
    the round ended for them; ``keeper`` renews the lease and closes the round when it
    comes due."""

    base: int
    contributions: dict[str, tuple[int, Contribution, FloatArray]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    ended: asyncio.Future[_Ended] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    keeper: asyncio.Task[None] | None = None


class _Arrivals:
    """The contributions of this process whose store call is under way, per session:
    the store numbers them in one order, their requests resume in another, so a close
    waits for them to be held before it takes its round from memory."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._settled: dict[str, asyncio.Event] = {}

    def begin(self, session_id: str) -> None:
        self._counts[session_id] = self._counts.get(session_id, 0) + 1

    def end(self, session_id: str) -> None:
        self._counts[session_id] -= 1
        if not self._counts[session_id]:
            del self._counts[session_id]
            settled = self._settled.pop(session_id, None)
            if settled is not None:
                settled.set()

    async def settled(self, session_id: str) -> None:
        """Return when no store call of a contribution to the session is under way."""
        if session_id in self._counts:
            event = self._settled.setdefault(session_id, asyncio.Event())
            await event.wait()


class _TakenOut(Exception):
    """The contribution was taken out of its round with its holder: contribute again."""


@dataclass(frozen=True, slots=True)
class Contributed:
    """A contribution that is in: its session, the step its round will produce,
    whether an earlier request with its Idempotency-Key put it in, the round as it left
    it when it did not close it, or the record its close committed; when this process
    holds its gradient, the round it is held in and what to store it with."""

    session_id: str
    rule: RoundRule
    round_step: int
    replayed: bool
    pending: RoundView | None = None
    # The record the close this contribution made committed (no read to answer).
    closed: SessionRecord | None = None
    held: _Held | None = None
    record: SessionRecord | None = None
    contribution: Contribution | None = None
    gradient: FloatArray | None = None
    # Contributes the same gradient again (it was taken out of its round).
    again: Callable[[], Awaitable[Contributed]] | None = None
    idempotency_key: str | None = None


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
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._store = store
        self._rounds = rounds
        self._metrics = metrics
        self._idempotency_ttl_ms = int(idempotency_ttl_seconds * 1000)
        self._grace_ms = int(close_grace_seconds * 1000)
        self._holder = Holder(secrets.token_hex(8), int(lease_seconds * 1000))
        self._lease_seconds = lease_seconds
        self._closing: dict[str, asyncio.Task[SessionRecord | None]] = {}
        self._held: dict[str, _Held] = {}
        self._arrivals = _Arrivals()

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

        While the request waits, the gradient is held here; one that will not wait
        (``Prefer: wait=0``) is stored first. A gradient for another step than the open
        round's is refused (409 ``stale-gradient``), after waiting up to the request's
        wait for a full round to close; a retry is answered as its first request was.
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

        async def again() -> Contributed:
            return await self.contribute(record, gradient, logged=logged, request=request)

        hold = wait_seconds > 0
        contribution = Contribution("", "", 0, 0)

        async def attempt() -> ContributeOutcome | None:
            nonlocal contribution, hold
            contribution = Contribution(
                new_write_id(), wire.dtype.name, wire.nbytes, samples, report.loss, config,
                request.segments,
            )  # fmt: skip
            outcome = await self._rounds.contribute(
                record,
                contribution,
                wire,
                base_step=base_step,
                idempotency=claim,
                holder=self._holder if hold else None,
            )
            if outcome.status is WriteStatus.ELSEWHERE:
                hold = False  # another process holds the round: store it for that one
                return await attempt()
            return None if outcome.status is WriteStatus.EXPIRED else outcome

        rule = record.settings.rounds
        assert rule is not None, "contributions go to rounds sessions"
        held = None
        self._arrivals.begin(session_id)
        try:
            outcome = await self._store.until_committed(attempt)
            if hold and outcome.status is WriteStatus.COMMITTED:
                held = self._hold(session_id, rule, outcome, contribution, wire, idempotency_key)
        finally:
            self._arrivals.end(session_id)
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
            self._metrics.contributions.labels("replayed").inc()
            held = self._held.get(session_id)
            held_here = held is not None and held.base + 1 == outcome.replay.applied_t
            if held is not None and held_here and idempotency_key in held.keys:
                # Its first request's gradient is held here: wait for that round too.
                _, contribution, _ = held.contributions[held.keys[idempotency_key]]
                return Contributed(
                    session_id, rule, outcome.replay.applied_t, True, held=held, record=record,
                    contribution=contribution, gradient=wire, again=again,
                    idempotency_key=idempotency_key,
                )  # fmt: skip
            return Contributed(
                session_id, rule, outcome.replay.applied_t, True, again=again,
                idempotency_key=idempotency_key,
            )  # fmt: skip
        round_step = outcome.base + 1
        self._metrics.contributions.labels("taken").inc()
        if outcome.complete:
            closed = await self._close(session_id, outcome.base, outcome.contributions, "complete")
            return Contributed(session_id, rule, round_step, False, closed=closed)
        return Contributed(
            session_id, rule, round_step, False, _view_of(outcome), held=held, record=record,
            contribution=contribution, gradient=wire, again=again,
        )  # fmt: skip

    async def answer(
        self, contributed: Contributed, wait_seconds: float
    ) -> StepResult | RoundPending:
        """The round's step once it closes, or ``RoundPending`` after ``wait_seconds``
        (the contribution stays in: stored first, when it was held here)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            try:
                return await self._answer(contributed, deadline)
            except _TakenOut:
                assert contributed.again is not None, "a contribution that was taken out"
                self._metrics.contributions.labels("taken_out").inc()
                contributed = await contributed.again()

    async def _answer(self, contributed: Contributed, deadline: float) -> StepResult | RoundPending:
        loop = asyncio.get_running_loop()
        session_id, round_step = contributed.session_id, contributed.round_step
        if contributed.held is not None:
            return await self._answer_held(contributed, deadline)
        pending = None
        if contributed.pending is not None:
            pending = (contributed.rule, contributed.pending)
        seen: SessionRecord | None
        view: RoundView | None = None
        if contributed.closed is not None and contributed.closed.t >= round_step:
            seen = contributed.closed  # its own close: the record it committed
        elif contributed.replayed:
            # Its first request's gradient may be held by a process that died: look
            # that the round still counts it, each lease.
            while True:
                remaining = deadline - loop.time()
                seen, view = await self.wait_for_step(
                    session_id, round_step, max(0.0, min(remaining, self._lease_seconds))
                )
                if (seen is not None and seen.t >= round_step) or remaining <= self._lease_seconds:
                    break
                assert contributed.again is not None
                await self._still_in(contributed)
        else:
            seen, view = await self.wait_for_step(
                session_id, round_step, max(0.0, deadline - loop.time()), pending=pending
            )
        if seen is None:
            seen = await self._store.record(session_id)
        if seen.t >= round_step:
            current, params = await self._store.params_of(seen)
            return StepResult(current, params, round_step, contributed.replayed)
        if contributed.replayed:
            await self._still_in(contributed)  # it is told it is in: it must be
        return self._not_closed(contributed, seen, view)

    async def _still_in(self, contributed: Contributed) -> None:
        """Raise ``_TakenOut`` when the round no longer counts the replayed
        contribution (its Idempotency-Key is no longer recorded)."""
        key = contributed.idempotency_key
        assert key is not None, "a replayed contribution has its key"
        if await self._store.read_idempotency(contributed.session_id, key) is None:
            raise _TakenOut

    def _not_closed(
        self, contributed: Contributed, seen: SessionRecord, view: RoundView | None
    ) -> RoundPending:
        round_step = contributed.round_step
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

    async def _answer_held(
        self, contributed: Contributed, deadline: float
    ) -> StepResult | RoundPending:
        """Wait for the round whose contribution this process holds; at the end of the
        wait, store it before telling its worker it is in."""
        held, record = contributed.held, contributed.record
        contribution, gradient = contributed.contribution, contributed.gradient
        assert held is not None and record is not None
        assert contribution is not None and gradient is not None
        remaining = deadline - asyncio.get_running_loop().time()
        with contextlib.suppress(TimeoutError):
            ended = await asyncio.wait_for(asyncio.shield(held.ended), max(0.0, remaining))
            return await self._ended(contributed, ended)
        status = await self._rounds.spill(record, held.base, self._holder, contribution, gradient)
        if status is WriteStatus.GONE:
            raise errors.SessionNotFound(record.id)
        if status is WriteStatus.COMMITTED:
            held.contributions.pop(contribution.write_id, None)
            view = await self._rounds.seal(record.id, held.base, grace_ms=self._grace_ms)
            if view.status is WriteStatus.COMMITTED and not view.sealed:
                return self._not_closed(contributed, record.evolve(t=held.base), view)
        # The round ended meanwhile (the keeper learns how at once) or closes now.
        return await self._ended(contributed, await asyncio.shield(held.ended))

    async def _ended(self, contributed: Contributed, ended: _Ended) -> StepResult | RoundPending:
        if ended.record is None:
            raise _TakenOut
        round_step = contributed.round_step
        if ended.params is not None and ended.record.t == round_step:
            return StepResult(ended.record, ended.params, round_step, contributed.replayed)
        if ended.record.t >= round_step:
            current, params = await self._store.params_of(ended.record)
            return StepResult(current, params, round_step, contributed.replayed)
        return self._not_closed(contributed, ended.record, None)

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
        sealed by a closer that died) when no process holds contributions of them.
        Returns the record as last read (None when none was) and the open round as last
        seen.

        ``pending``: the session's rule and open round as the caller just left them
        (below ``min_step``): the first look at the store is skipped. A wait that ends
        with news of the step it waits for costs one read.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        record: SessionRecord | None = None
        rule, view = pending if pending is not None else (None, None)
        look = pending is None
        with self._store.watch(session_id) as watch:
            while True:
                if look:
                    record = await self._store.record(session_id)
                    if record.t >= min_step:
                        return record, view
                    rule = record.settings.rounds
                    if rule is not None:
                        view = await self._rounds.seal(
                            session_id, record.t, grace_ms=self._grace_ms
                        )
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
                wake = await watch.wait(pause, until_step=min_step)
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

    def _hold(
        self,
        session_id: str,
        rule: RoundRule,
        outcome: ContributeOutcome,
        contribution: Contribution,
        gradient: FloatArray,
        idempotency_key: str | None,
    ) -> _Held:
        """Keep a contribution the store counts as held here (its number in the round is
        ``outcome.contributions``); start the round's keeper when it is the first."""
        held = self._held.get(session_id)
        if held is not None and (held.base != outcome.base or held.ended.done()):
            # The session moved past that round (or went back, or dropped it): its
            # keeper ends it.
            held = None
        if held is None:
            held = self._held[session_id] = _Held(outcome.base)
        number = outcome.contributions
        held.contributions[contribution.write_id] = (number, contribution, gradient)
        if idempotency_key is not None:
            held.keys[idempotency_key] = contribution.write_id
        if held.keeper is None:
            pause = min(RENEW_SECONDS, self._due_in(rule, _view_of(outcome)))
            held.keeper = asyncio.create_task(self._keep(session_id, held, pause))
        return held

    async def _keep(self, session_id: str, held: _Held, first_pause: float) -> None:
        """Renew this process's lease on the round ``held`` is for while it holds
        contributions of it, close it when it comes due, and say how it ended."""
        try:
            with self._store.watch(session_id) as watch:
                # The contribution that made it took the lease: nothing to look at
                # until the round's news, its deadline, or the lease's renewal.
                await watch.wait(first_pause)
                while not held.ended.done() and held.contributions:
                    try:
                        pause = await self._look_as_holder(session_id, held)
                    except (errors.StoreUnavailable, errors.OutcomeUnknown):
                        # The store records these contributions as held here: dropping
                        # them now would lose them for good while this process, alive,
                        # keeps the lease of the round's others. Keep them and look
                        # again; a store away past the lease takes them out itself,
                        # and the next look says so.
                        pause = STORE_RETRY_SECONDS
                    if pause is None:
                        return
                    await watch.wait(pause)
        except Exception as exc:  # every waiter on the round answers it
            if not held.ended.done():
                held.ended.set_exception(exc)
                held.ended.exception()  # retrieved: waiters may all be gone
        finally:
            if self._held.get(session_id) is held and (held.ended.done() or not held.contributions):
                del self._held[session_id]

    async def _look_as_holder(self, session_id: str, held: _Held) -> float | None:
        """Look at the round as its holder (renewing the lease) and close it when it is
        due: the seconds until the next look, or None when the round ended for ``held``."""
        view = await self._rounds.seal(
            session_id, held.base, grace_ms=self._grace_ms, holder=self._holder
        )
        if view.status is WriteStatus.GONE:
            raise errors.SessionNotFound(session_id)
        if view.status is WriteStatus.DROPPED:
            raise errors.RoundDropped(view.dropped or "the round was dropped")
        if view.status is WriteStatus.CONFLICT:
            # The session is past the round: its close, or a rollback or reset.
            if not held.ended.done():
                self._end(session_id, held, _Ended(await self._store.record(session_id)))
            return None
        rule = (await self._store.record(session_id, fresh=False)).settings.rounds
        if view.sealed:
            needed = 1 if rule is None else rule.needed(view.contributions, view.samples)
            how = "complete" if needed == 0 else "deadline"
            await self._close(session_id, held.base, view.contributions, how)
            return 0.0
        if not view.holding:
            self._end(session_id, held, _Ended(None))  # taken out: the lease lapsed
            return None
        return RENEW_SECONDS if rule is None else min(RENEW_SECONDS, self._due_in(rule, view))

    def _end(self, session_id: str, held: _Held, ended: _Ended) -> None:
        if not held.ended.done():
            held.ended.set_result(ended)
        if self._held.get(session_id) is held:
            del self._held[session_id]

    def _due_in(self, rule: RoundRule, view: RoundView) -> float:
        """Seconds until the open round may need this waiter: its deadline, the end of
        its closer's grace, or of its holder's lease (at least a few ms; the notifier
        caps the wait at a second)."""
        due = float("inf")
        if view.sealed_ms and view.held:
            due = view.lease_ms - view.now_ms
        elif view.sealed_ms:
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
        dropped = errors.RoundDropped(why)
        held = self._held.get(session_id)
        if held is not None and held.base == base:
            # The next round starts from the same base: it is held anew.
            del self._held[session_id]
            if not held.ended.done():
                held.ended.set_exception(dropped)
                held.ended.exception()
        raise dropped

    async def _taken(
        self, record: SessionRecord, contributions: int
    ) -> list[tuple[Contribution, FloatArray]] | None:
        """The round's contributions in their order: from memory when this process
        holds them all, else with the stored ones read."""
        every = list(range(1, contributions + 1))
        for settled in (False, True):
            if settled:
                # Contributions of this process whose store calls came back after this
                # one's are held in a moment: wait for them rather than read.
                await self._arrivals.settled(record.id)
            held = self._held.get(record.id)
            known = held.contributions if held is not None and held.base == record.t else {}
            numbered = sorted(known.values(), key=lambda item: item[0])
            if [number for number, _, _ in numbered] == every:
                return [(contribution, gradient) for _, contribution, gradient in numbered]
        gradients = {write_id: gradient for write_id, (_, _, gradient) in known.items()}
        return await self._rounds.round_contributions(record, contributions, gradients)

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
            taken = await self._taken(current.record, contributions)
            if taken is None:
                return (None,)  # not this process's to close, or another round now
            record = current.record
            optimizer = record.optimizer
            for contribution, _ in taken:
                if contribution.config is not None:
                    optimizer = contribution.config
            rule = record.settings.rounds
            assert rule is not None, "a rounds session has its rule"
            mean, present = round_gradient(rule, record, taken)
            commit = Commit(current)
            commit.stage(self._store, optimizer, mean, present)
            try:
                try:
                    with self._metrics.step_phases.labels("math").time():
                        state = await compute_step(current.state, mean, optimizer, present)
                except errors.NonFiniteUpdate as exc:
                    await self._drop(session_id, base, contributions, exc)  # raises if dropped
                    return None
                loss = _mean_loss([contribution for contribution, _ in taken])
                await commit.add(
                    state, optimizer, mean, mean, report=Report(loss=loss), segments=present
                )
                outcome = await commit.run(
                    self._store,
                    self._metrics,
                    idempotency_ttl_ms=self._idempotency_ttl_ms,
                    round_entries=[contribution.write_id for contribution, _ in taken],
                )
            finally:
                await commit.release()
            if outcome.status is WriteStatus.COMMITTED:
                assert outcome.rev is not None
                self._metrics.rounds.labels(how).inc()
                closed, stepped = commit.answered(0, outcome.rev)
                held = self._held.get(session_id)
                if held is not None and held.base == base:
                    self._end(session_id, held, _Ended(closed, stepped.params))
                return (closed,)
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


def _view_of(outcome: ContributeOutcome) -> RoundView:
    """The open round as a contribution that did not complete it left it."""
    return RoundView(
        WriteStatus.COMMITTED,
        contributions=outcome.contributions,
        samples=outcome.samples,
        first_ms=outcome.first_ms,
        now_ms=outcome.now_ms,
    )


def _mean_loss(contributions: Sequence[Contribution]) -> float | None:
    """The samples-weighted mean of the losses the contributions reported, if any did."""
    reported = [(c.samples, c.loss) for c in contributions if c.loss is not None]
    if not reported:
        return None
    total = sum(n * loss for n, loss in reported)
    return float(total) / sum(n for n, _ in reported)


def _stale(base_step: int | None, t: int) -> errors.StaleGradient:
    return stale_gradient(base_step, t, f"the open round steps from t={t}")
