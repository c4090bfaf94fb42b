"""Acknowledged writes: with ``ADAMHUB_REPLICA_ACKS=N``, a write that changes state is
answered only once N replicas of the store hold it.

``WAIT`` counts the writes of the connection it is sent on, so it goes in the same
pipeline as the write; in a cluster, to the primary of the write's slot, whose commands
of a pipeline share one connection. When the replicas do not confirm within the timeout
the write is on the primary but may not survive its death: the caller is told
``OutcomeUnknown`` (503; a retry with the same Idempotency-Key is safe), never a
success. So is a cluster write whose slot moved while it ran (a failover, a reshard):
its ``WAIT`` went to the old primary, and confirms nothing.
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
from adamhub_service.storage.topology import primary_of


def committed(reply: Any) -> bool:
    """Whether a session script's reply says it wrote (its first element is COMMITTED)."""
    return int(reply[0]) == WriteStatus.COMMITTED


@dataclass(frozen=True, slots=True)
class ReplicaAcks:
    """How many replicas must confirm a write (0: none, no ``WAIT``), and for how long
    to wait for them."""

    replicas: int = 0
    timeout_ms: int = 5000

    def add_wait(self, client: redis.Redis, pipe: Pipeline, key: str) -> Waited | None:
        """Put ``WAIT`` at the end of ``pipe`` (whose last reply it then is), for the write
        to ``key``; None, and nothing added, when no replica need confirm."""
        if not self.replicas:
            return None
        node = primary_of(client, key)
        if node is None:
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
            return Waited(client, key, None)
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms, target_nodes=node)
        return Waited(client, key, node.name)

    def confirm(self, confirmed: Any, waited: Waited) -> None:
        """Raise ``OutcomeUnknown`` unless ``confirmed`` (WAIT's reply) is enough, from
        the primary that took the write."""
        if waited.moved():
            raise OutcomeUnknown(
                "the store's cluster moved the session's slot while the write ran, so no "
                "replica's confirmation is known: retry with the same Idempotency-Key, or "
                "read the session"
            )
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
                waited = self.add_wait(client, pipe, str(keys[0]))
                assert waited is not None
                reply, confirmed = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError):
                # Not run (the store restarted): load it and send both again.
                await client.script_load(script.script)
                continue
            if isinstance(reply, Exception):
                raise reply
            if wrote(reply):
                self.confirm(confirmed, waited)
            return reply
        raise OutcomeUnknown("the store kept forgetting a script; nothing is known of the write")


@dataclass(frozen=True, slots=True)
class Waited:
    """A ``WAIT`` sent after a write to ``key``, to the cluster node named ``node``
    (None: the one Redis)."""

    client: redis.Redis
    key: str
    node: str | None

    def moved(self) -> bool:
        """Whether the key's slot is served by another node now."""
        if self.node is None:
            return False
        now = primary_of(self.client, self.key)
        return now is None or now.name != self.node


# No replica confirms: writes are answered as soon as the primary has them.
NO_ACKS = ReplicaAcks()
