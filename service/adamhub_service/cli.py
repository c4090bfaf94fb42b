"""``adamhub-service``: the command line of the service."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from adamhub_service import __version__
from adamhub_service.embedded import EmbeddedStoreError, EmbeddedValkey
from adamhub_service.settings import Settings

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
        "--data-dir", type=Path, help="embedded store's folder (ADAMHUB_DATA_DIR, ./adamhub-data)"
    )
    serve.add_argument("--workers", type=int, help="worker processes (ADAMHUB_WORKERS, 1)")
    serve.add_argument("--log-level", help="debug, info, warning… (ADAMHUB_LOG_LEVEL, info)")
    demo = commands.add_parser(
        "demo",
        help="train a small model with several workers through a temporary service",
        description="Start the service with an embedded store in a temporary folder, train "
        "a small network on synthetic data with several worker processes stepping one "
        "session, print the loss falling and a summary, then stop everything.",
    )
    demo.add_argument("--workers", type=int, default=4, help="worker processes (4)")
    demo.add_argument("--steps", type=int, default=150, help="steps per worker (150)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from adamhub_service.demo import run

        return run(workers=args.workers, steps=args.steps)
    flags = {
        key: value for key, value in vars(args).items() if key != "command" and value is not None
    }
    settings = Settings(**flags)
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s: %(message)s")
    try:
        return serve(settings)
    except EmbeddedStoreError as exc:
        logger.error("%s", exc)
        return 1


def serve(settings: Settings) -> int:
    """Serve until interrupted, with the embedded store when no Redis URL is set."""
    # uvicorn shuts down gracefully on SIGTERM, then raises it again: make that an
    # exception, so the embedded store below is stopped on the way out.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with contextlib.ExitStack() as stack:
        if not settings.redis_url:
            embedded = stack.enter_context(EmbeddedValkey(settings.data_dir))
            settings = settings.model_copy(update={"redis_url": embedded.url})
            logger.info(
                "embedded Valkey (pid %s) keeps its data in %s", embedded.pid, embedded.data_dir
            )
        _export(settings)  # worker processes build their settings from the environment
        uvicorn.run(
            "adamhub_service.app:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            access_log=settings.log_level.lower() == "debug",
        )
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # a stop that was asked for and completed is a success


def _export(settings: Settings) -> None:
    for name, value in settings.model_dump().items():
        if value is not None:
            os.environ[f"ADAMHUB_{name.upper()}"] = str(value)
