"""The sub-commands of ``adamhub-service``: serve and demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from adamhub_service import __version__
from adamhub_service.api.auth import is_loopback
from adamhub_service.cli import key_commands
from adamhub_service.cli.embedded import EmbeddedStoreError, EmbeddedValkey
from adamhub_service.cli.handoff import PEERS_ENV
from adamhub_service.cli.protocol import ServiceProtocol
from adamhub_service.config import ServerOptions, Settings
from adamhub_service.observability.logs import configure_logging
from adamhub_service.observability.metrics import MULTIPROCESS_ENV

logger = logging.getLogger("adamhub_service")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag defaults to its ``ADAMHUB_*`` variable."""
    parser = argparse.ArgumentParser(
        prog="adamhub-service", description="Adam as a service: the HTTP server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the service. Without --redis-url it starts an embedded Valkey "
        "(AOF on) that keeps its data in --data-dir.",
    )
    serve.add_argument("--host", help="address to listen on (ADAMHUB_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (ADAMHUB_PORT, 8000)")
    serve.add_argument("--redis-url", help="Redis to use (ADAMHUB_REDIS_URL); default: embedded")
    serve.add_argument(
        "--redis-cluster",
        action="store_true",
        default=None,
        help="--redis-url is a node of a Redis Cluster (ADAMHUB_REDIS_CLUSTER)",
    )
    serve.add_argument(
        "--data-dir", type=Path, help="embedded store's folder (ADAMHUB_DATA_DIR, ./adamhub-data)"
    )
    serve.add_argument("--workers", type=int, help="worker processes (ADAMHUB_WORKERS, 1)")
    serve.add_argument(
        "--replica-acks",
        type=int,
        help="replicas of the store that confirm each write before it is acknowledged "
        "(ADAMHUB_REPLICA_ACKS, 0)",
    )
    serve.add_argument("--log-level", help="debug, info, warning… (ADAMHUB_LOG_LEVEL, info)")
    serve.add_argument(
        "--master-key",
        help="secret that makes API keys (ADAMHUB_MASTER_KEY); without it only clients on "
        "this machine are served",
    )
    demo = commands.add_parser(
        "demo",
        help="train a small model with several workers through a temporary service",
        description="Start the service with an embedded store in a temporary folder, train "
        "a small network on synthetic data with several worker processes stepping one "
        "session, print the loss falling and a summary, then stop everything.",
    )
    demo.add_argument("--workers", type=int, default=4, help="worker processes (4)")
    demo.add_argument(
        "--steps", type=int, default=150, help="steps per worker, or rounds with --sync (150)"
    )
    demo.add_argument(
        "--sync",
        action="store_true",
        help="synchronous rounds: each step is the mean of every worker's gradient (as DDP)",
    )
    key_commands.add_parser(commands)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from adamhub_service.cli import demo

        if args.sync:
            return demo.run_sync(workers=args.workers, rounds=args.steps)
        return demo.run(workers=args.workers, steps=args.steps)
    if args.command == "keys":
        store = ServerOptions(**({"data_dir": args.data_dir} if args.data_dir else {}))
        defaults = Settings()
        redis_url = args.redis_url or defaults.redis_url
        cluster = bool(args.redis_cluster or defaults.redis_cluster)
        return key_commands.run(args, redis_url, store.data_dir, cluster=cluster)
    flags = {
        key: value for key, value in vars(args).items() if key != "command" and value is not None
    }
    server_fields = set(ServerOptions.model_fields)
    options = ServerOptions(**{k: v for k, v in flags.items() if k in server_fields})
    settings = Settings(**{k: v for k, v in flags.items() if k not in server_fields})
    configure_logging(options.log_level, options.log_format)
    if settings.redis_cluster and not settings.redis_url:
        logger.error("--redis-cluster needs --redis-url, a node of the cluster")
        return 2
    try:
        return serve(options, settings)
    except EmbeddedStoreError as exc:
        logger.error("%s", exc)
        return 1


def serve(options: ServerOptions, settings: Settings) -> int:
    """Serve until interrupted, with the embedded store when no Redis URL is set."""
    # uvicorn shuts down gracefully on SIGTERM, then raises it again: make that an
    # exception, so the embedded store below is stopped on the way out.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    loopback = is_loopback(options.host)
    if settings.allowed_hosts is None and loopback:
        # Against DNS rebinding: a page elsewhere must not reach a local service by name.
        settings = settings.model_copy(update={"allowed_hosts": list(LOOPBACK_NAMES)})
    if settings.master_key is None and not loopback:
        logger.warning(
            "listening on %s without a master key: protected mode serves clients on this "
            "machine only; set ADAMHUB_MASTER_KEY to serve others",
            options.host,
        )
    with contextlib.ExitStack() as stack:
        if not settings.redis_url:
            embedded = stack.enter_context(EmbeddedValkey(options.data_dir))
            settings = settings.model_copy(update={"redis_url": embedded.url})
            logger.info(
                "embedded Valkey (pid %s) keeps its data in %s", embedded.pid, embedded.data_dir
            )
        _export(settings)  # worker processes build their settings from the environment
        if options.workers > 1 and not os.environ.get(MULTIPROCESS_ENV):
            # Each worker keeps its metrics here; a scrape of any answers their sum.
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="adamhub-metrics-"))
            os.environ[MULTIPROCESS_ENV] = folder
        if options.workers > 1:
            # The workers hand each other the connections of the sessions they own.
            peers = stack.enter_context(tempfile.TemporaryDirectory(prefix="adamhub-peers-"))
            os.environ[PEERS_ENV] = peers
        log_level = options.log_level.lower()
        uvicorn.run(
            "adamhub_service.app:create_app_from_env",
            factory=True,
            host=options.host,
            port=options.port,
            workers=options.workers,
            log_level=log_level,
            # adamhub logs each request itself (observability/logs.py), and its workers
            # configure their own logging.
            access_log=False,
            log_config=None,
            # Long-polls and event streams do not hold a shutdown longer than this.
            timeout_graceful_shutdown=10,
            http=ServiceProtocol,
            limit_concurrency=options.limit_concurrency,
        )
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # a stop that was asked for and completed is a success


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _export(settings: Settings) -> None:
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            os.environ[f"ADAMHUB_{name.upper()}"] = text
