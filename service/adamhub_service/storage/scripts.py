"""Loading the Lua scripts of ``lua/``: the session scripts share ``common.lua``,
prepended to each."""

from __future__ import annotations

from importlib import resources

import redis.asyncio as redis
from redis.commands.core import AsyncScript

_PACKAGE = resources.files("adamhub_service.storage")
# The scripts that touch one session's keys (its slot) and share its helpers.
SESSION_SCRIPTS = (
    "append",
    "snapshot",
    "commit",
    "rollback",
    "delete",
    "load",
    "contribute",
    "seal",
    "spill",
    "drop",
    "grow",
    "sweep",
)


def script_source(name: str) -> str:
    """The source of ``lua/<name>.lua``, with the shared helpers when it needs them."""
    source = _PACKAGE.joinpath("lua", f"{name}.lua").read_text()
    if name in SESSION_SCRIPTS:
        source = _PACKAGE.joinpath("lua", "common.lua").read_text() + source
    return source


def register(client: redis.Redis, name: str) -> AsyncScript:
    """``lua/<name>.lua`` registered with ``client`` (sent by its SHA after the first)."""
    return client.register_script(script_source(name))
