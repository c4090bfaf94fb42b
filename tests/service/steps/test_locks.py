"""Per-session locks: one queue per key, in arrival order."""

from __future__ import annotations

import asyncio

from adamhub_service.steps.locks import KeyedLocks


def test_keyed_locks_serialise_one_key_in_arrival_order_and_free_themselves() -> None:
    async def scenario() -> None:
        locks = KeyedLocks()
        order: list[str] = []

        async def hold(key: str, name: str) -> None:
            async with locks.hold(key):
                order.append(f"{name}+")
                await asyncio.sleep(0.01)
                order.append(f"{name}-")

        await asyncio.gather(hold("a", "1"), hold("a", "2"), hold("b", "3"), hold("a", "4"))
        a_events = [event for event in order if event[0] in "124"]
        assert a_events == ["1+", "1-", "2+", "2-", "4+", "4-"]
        assert order.index("3+") < order.index("1-")  # another key does not wait
        assert locks._locks == {}

    asyncio.run(scenario())
