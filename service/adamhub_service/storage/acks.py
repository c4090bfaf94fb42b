"""Acknowledged writes: with ``ADAMHUB_REPLICA_ACKS=N``, a write that changes state is
answered only once N replicas of the store hold it.

``WAIT`` counts the writes of the connection it is sent on, so it goes in the same
pipeline as the write. When the replicas do not confirm within the timeout the write is
on the primary but may not survive its death: the caller is told ``OutcomeUnknown``
(503; a retry with the same Idempotency-Key is safe), never a success.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from adamhub_service.errors import OutcomeUnknown
from adamhub_service.model.outcomes import WriteStatus


def committed(reply: Any) -> bool:
    """Whether a session script's reply says it wrote (its first element is COMMITTED)."""
    return int(reply[0]) == WriteStatus.COMMITTED


@dataclass(frozen=True, slots=True)
class ReplicaAcks:
    """How many replicas must confirm a write (0: none, no ``WAIT``), and for how long
    to wait for them."""

    replicas: int = 0
    timeout_ms: int = 5000

    def add_wait(self, pipe: Pipeline) -> bool:
        """Put ``WAIT`` at the end of ``pipe`` (whose last reply it then is); False, and
        nothing added, when no replica need confirm."""
        if not self.replicas:
            return False
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
        return True

    def confirm(self, confirmed: Any) -> None:
        """Raise ``OutcomeUnknown`` unless ``confirmed`` (WAIT's reply) is enough."""
        if isinstance(confirmed, Exception) or int(confirmed) < self.replicas:
            raise OutcomeUnknown(
                f"the write is on the store's primary, but {self.replicas} of its replicas "
                f"did not confirm it within {self.timeout_ms / 1000:g} s, so it may not "
                "survive the primary's death: retry with the same Idempotency-Key, or read "
                "the session"
            )

    async def run(
        self,
        client: redis.Redis,
        script: AsyncScript,
        keys: Sequence[Any],
        args: Sequence[Any],
        *,
        wrote: Callable[[Any], bool] = committed,
    ) -> Any:
        """Run ``script``; with replicas to confirm, in one pipeline with its ``WAIT``,
        checked when ``wrote(reply)``."""
        if not self.replicas:
            return await script(keys=keys, args=args)
        for _ in range(2):
            async with client.pipeline(transaction=False) as pipe:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                self.add_wait(pipe)
                reply, confirmed = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError):
                # Not run (the store restarted): load it and send both again.
                await client.script_load(script.script)
                continue
            if isinstance(reply, Exception):
                raise reply
            if wrote(reply):
                self.confirm(confirmed)
            return reply
        raise OutcomeUnknown("the store kept forgetting a script; nothing is known of the write")


# No replica confirms: writes are answered as soon as the primary has them.
NO_ACKS = ReplicaAcks()
