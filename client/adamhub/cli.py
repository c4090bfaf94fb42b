"""``adamhub``: the users' command line, over the SDK.

    adamhub sessions list [--name PATTERN] [--tag TAG]... [--order -updated_at]
    adamhub sessions show|rm ID
    adamhub sessions fork ID [--name NAME]
    adamhub sessions rollback ID T
    adamhub sessions export ID -o FILE
    adamhub sessions import FILE [--name NAME]
    adamhub keys create [--tenant T] [--action A]... [--session ID]... [--expires-at TIME]
    adamhub keys list | revoke ID
    adamhub top [--name PATTERN] [--interval 1] [--iterations N]

The service and key come from ``--base-url``/``--api-key`` or ``$ADAMHUB_BASE_URL`` and
``$ADAMHUB_API_KEY``. Errors print the service's problem and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from adamhub._client import Client
from adamhub._errors import AdamhubError, APIStatusError
from adamhub._session import Session

# `top`: the window over which steps/s is measured, and the workers counted.
RATE_WINDOW_SECONDS = 10.0
WORKER_WINDOW_SECONDS = 60.0
TOP_POINTS = 200


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    parser = argparse.ArgumentParser(prog="adamhub", description="Use an adamhub service.")
    parser.add_argument("--base-url", help="the service (default: $ADAMHUB_BASE_URL or :8000)")
    parser.add_argument("--api-key", help="an API key (default: $ADAMHUB_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)

    sessions = commands.add_parser("sessions", help="list, show, delete, fork, move sessions")
    session_commands = sessions.add_subparsers(dest="action", required=True)
    listing = session_commands.add_parser("list", help="the tenant's sessions")
    listing.add_argument("--name", help="a part of the name, or a glob (*, ?)")
    listing.add_argument(
        "--tag", dest="tags", action="append", help="only sessions with this tag (repeat: all)"
    )
    listing.add_argument(
        "--order",
        default="created_at",
        choices=["created_at", "-created_at", "updated_at", "-updated_at"],
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    for action, text in (("show", "a session's fields"), ("rm", "delete a session")):
        session_commands.add_parser(action, help=text).add_argument("id")
    fork = session_commands.add_parser("fork", help="a new session with this one's state")
    fork.add_argument("id")
    fork.add_argument("--name")
    rollback = session_commands.add_parser("rollback", help="return to an earlier step")
    rollback.add_argument("id")
    rollback.add_argument("t", type=int)
    export = session_commands.add_parser("export", help="save a checkpoint (safetensors)")
    export.add_argument("id")
    export.add_argument("-o", "--output", required=True, type=Path)
    imported = session_commands.add_parser("import", help="a new session from a checkpoint")
    imported.add_argument("file", type=Path)
    imported.add_argument("--name")

    keys = commands.add_parser("keys", help="make, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="action", required=True)
    create = key_commands.add_parser("create", help="make a key; prints its secret alone")
    create.add_argument("--tenant")
    create.add_argument("--action", dest="actions", action="append")
    create.add_argument("--session", dest="sessions", action="append")
    create.add_argument("--expires-at", help="RFC 3339, such as 2027-01-01T00:00:00Z")
    create.add_argument("--description")
    key_commands.add_parser("list", help="the keys, without secrets")
    key_commands.add_parser("revoke", help="revoke a key").add_argument("id")

    top = commands.add_parser("top", help="a live table of the sessions being trained")
    top.add_argument("--name", help="a part of the name, or a glob (*, ?)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument("--iterations", type=int, default=0, help="stop after N (0: never)")
    top.add_argument("--limit", type=int, default=20, help="sessions shown (20)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status."""
    args = build_parser().parse_args(argv)
    try:
        with Client(args.base_url, api_key=args.api_key) as client:
            if args.command == "sessions":
                return sessions_command(client, args, sys.stdout)
            if args.command == "keys":
                return keys_command(client, args, sys.stdout)
            return top_command(client, args, sys.stdout)
    except APIStatusError as exc:
        print(f"adamhub: {exc.status_code} {exc.problem.get('detail', exc)}", file=sys.stderr)
        return 1
    except (AdamhubError, OSError, ValueError) as exc:
        print(f"adamhub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def sessions_command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """``adamhub sessions …``."""
    if args.action == "list":
        found = client.list_sessions(name=args.name, order=args.order, tag=args.tags)
        if args.json:
            for session in found:
                print(json.dumps(session.resource), file=out)
            return 0
        rows = [
            [
                s.id,
                s.name or "",
                ",".join(s.tags),
                str(s.size),
                s.dtype,
                str(s.t),
                s.updated_at or "",
            ]
            for s in found
        ]
        print_table(["SESSION", "NAME", "TAGS", "SIZE", "DTYPE", "T", "UPDATED"], rows, out)
    elif args.action == "show":
        print(json.dumps(client.session(args.id).resource, indent=2), file=out)
    elif args.action == "rm":
        client.session(args.id).delete()
        print(f"deleted {args.id}", file=out)
    elif args.action == "fork":
        print(client.session(args.id).fork(name=args.name).id, file=out)
    elif args.action == "rollback":
        session = client.session(args.id)
        session.rollback(args.t)
        print(f"{session.id} is at t={session.t}", file=out)
    elif args.action == "export":
        session = client.session(args.id)
        session.save(args.output)
        print(f"wrote {args.output} (t={session.t})", file=out)
    else:
        print(client.import_session(args.file, name=args.name).id, file=out)
    return 0


def keys_command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """``adamhub keys …``."""
    if args.action == "create":
        made = client.keys.create(
            tenant=args.tenant,
            actions=args.actions,
            sessions=args.sessions,
            expires_at=args.expires_at,
            description=args.description,
        )
        print(made.key, file=out)  # alone, for `export ADAMHUB_API_KEY=$(adamhub keys create)`
    elif args.action == "list":
        rows = [
            [k.id, k.tenant, ",".join(k.actions), ",".join(k.sessions), k.expires_at or ""]
            for k in client.keys.list()
        ]
        print_table(["KEY", "TENANT", "ACTIONS", "SESSIONS", "EXPIRES"], rows, out)
    else:
        client.keys.revoke(args.id)
        print(f"revoked {args.id}", file=out)
    return 0


def top_command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """``adamhub top``: the table, redrawn every ``interval`` seconds."""
    live = out.isatty()
    done = 0
    while True:
        now = time.time()
        found = client.list_sessions(name=args.name, order="-updated_at")[: args.limit]
        rows = [
            top_row(session, session.history(limit=TOP_POINTS), now, session.screening())
            for session in found
        ]
        if live:
            out.write("\x1b[H\x1b[2J")
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        print(f"adamhub top — {client.base_url} — {stamp}", file=out)
        header = ["SESSION", "NAME", "T", "STEPS/S", "LOSS", "WORKERS", "REFUSED", "QUARANTINED"]
        print_table([*header, "LAST STEP"], rows, out)
        print(file=out, flush=True)
        done += 1
        if args.iterations and done >= args.iterations:
            return 0
        time.sleep(args.interval)


def top_row(
    session: Session, points: list[dict[str, Any]], now: float, screening: dict[str, Any]
) -> list[str]:
    """A session's line in ``top``: steps/s over the last seconds, the last loss, the
    workers seen in the last minute, the gradients screening refused in the last minute
    and the workers it holds in quarantine, and how long ago the last step was."""
    recent = [p for p in points if now - p["time"] <= RATE_WINDOW_SECONDS]
    rate = 0.0
    if len(recent) >= 2 and recent[-1]["time"] > recent[0]["time"]:
        rate = (recent[-1]["t"] - recent[0]["t"]) / (now - recent[0]["time"])
    losses = [p["loss"] for p in points if p["loss"] is not None]
    workers = {p["worker"] for p in points if now - p["time"] <= WORKER_WINDOW_SECONDS}
    # the service's clock and this machine's may differ by a little
    last = f"{max(0.0, now - points[-1]['time']):.0f} s ago" if points else "never"
    return [
        session.id,
        session.name or "",
        str(session.t),
        f"{rate:.1f}",
        f"{losses[-1]:.4g}" if losses else "-",
        str(len(workers - {None})),
        str(sum(now - r["time"] <= WORKER_WINDOW_SECONDS for r in screening["refusals"] or [])),
        ",".join(sorted(screening["quarantined"] or {})) or "-",
        last,
    ]


def print_table(header: list[str], rows: list[list[str]], out: TextIO) -> None:
    """Columns padded to their widest cell."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)


if __name__ == "__main__":
    sys.exit(main())
