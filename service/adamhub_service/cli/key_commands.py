"""``adamhub-service keys``: make, list and revoke API keys in the service's store,
also while the service runs on it."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adamhub_service import errors
from adamhub_service.cli.embedded import store_url
from adamhub_service.model.principal import ACTIONS, ALL, MASTER
from adamhub_service.storage.api_keys import RedisApiKeyRepository
from adamhub_service.storage.connection import connect
from adamhub_service.storage.migrations import move_old_keys
from adamhub_service.tenancy.api_keys import KeyService, NewKey

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``45m``, ``90s`` or a number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30d, 12h or 45m")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def add_parser(commands: Any) -> None:
    """The ``keys`` sub-commands."""
    keys = commands.add_parser(
        "keys",
        help="make, list and revoke API keys",
        description="Manage API keys in the store of a service (the same --redis-url or "
        "--data-dir as `serve`), also while it runs.",
    )
    _add_store_flags(keys, default=None)
    # The store flags go before the sub-command or after it: each sub-command takes them
    # too, without a default that would hide one given before it.
    store = argparse.ArgumentParser(add_help=False)
    _add_store_flags(store, default=argparse.SUPPRESS)
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser(
        "create", parents=[store], help="make a key; prints its secret alone"
    )
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    create.add_argument(
        "--action",
        action="append",
        choices=[ALL, *ACTIONS],
        help="an action the key grants (repeat; default: *)",
    )
    create.add_argument(
        "--session", action="append", help="a session id the key is limited to (repeat)"
    )
    create.add_argument("--expires-in", type=duration, help="e.g. 30d, 12h, 45m")
    create.add_argument("--description", help="free text")
    actions.add_parser("list", parents=[store], help="list the keys (never their secrets)")
    revoke = actions.add_parser(
        "revoke", parents=[store], help="revoke a key everywhere within a second"
    )
    revoke.add_argument("id", help="the key's id (k_…)")


def _add_store_flags(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--redis-url", default=default, help="Redis of the service (ADAMHUB_REDIS_URL)"
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        default=default,
        help="--redis-url is a node of a Redis Cluster (ADAMHUB_REDIS_CLUSTER)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=default, help="embedded store's folder (ADAMHUB_DATA_DIR)"
    )


def run(
    args: argparse.Namespace, redis_url: str | None, data_dir: Path, *, cluster: bool = False
) -> int:
    """Run a ``keys`` sub-command against the service's store."""
    commands: dict[str, Callable[[KeyService], Coroutine[Any, Any, int]]] = {
        "create": lambda keys: _create(keys, args),
        "list": _list,
        "revoke": lambda keys: _revoke(keys, args.id),
    }
    command = commands[args.keys_command]
    try:
        if redis_url:
            return asyncio.run(_with_keys(redis_url, command, cluster=cluster))
        with store_url(data_dir) as url:
            return asyncio.run(_with_keys(url, command, cluster=False))
    except errors.AdamhubError as exc:
        print(f"adamhub-service keys: {exc.detail}", file=sys.stderr)
        return 1


async def _with_keys(
    url: str, command: Callable[[KeyService], Coroutine[Any, Any, int]], *, cluster: bool
) -> int:
    client = connect(url, timeout_seconds=10, max_connections=4, cluster=cluster)
    try:
        if not cluster:  # a cluster never held an earlier version's names
            await move_old_keys(client)
        return await command(KeyService(RedisApiKeyRepository(client), master_key=None))
    finally:
        await client.aclose()


async def _create(keys: KeyService, args: argparse.Namespace) -> int:
    expires = None if args.expires_in is None else datetime.now(UTC) + args.expires_in
    key, secret = await keys.create(
        NewKey(
            tenant=args.tenant,
            actions=tuple(args.action or [ALL]),
            sessions=tuple(args.session or [ALL]),
            expires_at=expires,
            description=args.description,
        ),
        MASTER,
    )
    print(f"made key {key.id} for tenant {key.tenant}", file=sys.stderr)
    print(secret)
    return 0


async def _list(keys: KeyService) -> int:
    rows = [("ID", "TENANT", "ACTIONS", "SESSIONS", "EXPIRES", "DESCRIPTION")]
    for key in await keys.list(MASTER):
        rows.append(
            (
                key.id,
                key.tenant,
                ",".join(key.actions),
                ",".join(key.sessions),
                key.expires_at or "never",
                key.description or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


async def _revoke(keys: KeyService, key_id: str) -> int:
    await keys.revoke(key_id, MASTER)
    print(f"revoked {key_id}", file=sys.stderr)
    return 0
