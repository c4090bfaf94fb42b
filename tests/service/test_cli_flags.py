"""``adamhub-service keys``: the store flags before the sub-command or after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from adamhub_service.cli.commands import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "--data-dir", "/d", "create", "--tenant", "acme"],
        ["keys", "create", "--tenant", "acme", "--data-dir", "/d"],
        ["keys", "create", "--data-dir", "/d", "--tenant", "acme"],
    ],
)
def test_keys_create_takes_the_data_dir_anywhere(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.keys_command, args.tenant, args.data_dir) == ("create", "acme", Path("/d"))
    assert args.redis_url is None


@pytest.mark.parametrize("command", [["list"], ["revoke", "k_1"]])
def test_every_keys_command_takes_the_redis_url_after_it(command: list[str]) -> None:
    url = "redis://example:6379/0"
    after = build_parser().parse_args(["keys", *command, "--redis-url", url])
    before = build_parser().parse_args(["keys", "--redis-url", url, *command])
    assert after.redis_url == before.redis_url == url
    assert after.data_dir is None
