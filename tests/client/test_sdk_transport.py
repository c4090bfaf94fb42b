"""How the SDK sends: large bodies in pieces, sane Retry-After, idempotent DELETE retries,
and a clear message when the service's dependencies are missing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import numpy as np
import pytest

import adamhub
from adamhub._base_client import BODY_PIECE_BYTES, MAX_RETRY_AFTER, parse_retry_after
from adamhub_service.testing import DroppingProxy


def test_large_bodies_go_in_pieces_with_a_content_length(service_url: str) -> None:
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    size = 3 * BODY_PIECE_BYTES // 4 + 5  # float32: three pieces and a bit
    start = np.random.default_rng(0).normal(size=size).astype(np.float32)
    with adamhub.Client(service_url, http_client=http) as client:
        session = client.create_session(start)  # large params go as one binary PUT
        assert np.array_equal(session.params(), start)
        gradient = np.ones(size, np.float32)
        session.step(gradient)
        session.delete()
    uploads = [r for r in sent if r.method in ("PUT", "POST") and "session" in r.url.path]
    large = [r for r in uploads if int(r.headers.get("content-length", 0)) > BODY_PIECE_BYTES]
    assert [r.method for r in large] == ["PUT", "POST"]
    for request in large:
        assert int(request.headers["content-length"]) == size * 4
        assert "transfer-encoding" not in request.headers
        assert not isinstance(request.stream, httpx.ByteStream)  # streamed, not one buffer
    http.close()


def test_async_client_streams_large_bodies_too(service_url: str) -> None:
    async def scenario() -> None:
        size = BODY_PIECE_BYTES // 2 + 1  # float32: over one piece
        async with adamhub.AsyncClient(service_url) as client:
            session = await client.create_session(size=size)
            params = await session.step(np.ones(size, np.float32))
            assert session.t == 1 and params.shape == (size,)
            await session.delete()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("2", 2.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("1e9", MAX_RETRY_AFTER),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("-inf", None),
        ("Mon, 99 Foo 2026 99:99:99 GMT", None),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ],
)
def test_retry_after_of_any_value_is_a_sane_delay(
    value: str | None, expected: float | None
) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_as_an_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    delay = parse_retry_after(later)
    assert delay is not None and 25 <= delay <= 30


def test_a_retried_delete_whose_first_answer_was_lost_succeeds(service_url: str) -> None:
    port = int(service_url.rsplit(":", 1)[1])
    with adamhub.Client(service_url) as direct:
        session = direct.create_session(size=3)
    proxy = DroppingProxy(port, drop_ratio=1.0)

    def forward_after_the_first_loss() -> None:
        deadline = time.monotonic() + 20
        while proxy.dropped < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        proxy.drop_ratio = 0.0

    flipper = threading.Thread(target=forward_after_the_first_loss)
    flipper.start()
    try:
        with adamhub.Client(proxy.base_url, initial_retry_delay=0.2) as client:
            adamhub.Session(client, {**_resource(session)}).delete()
    finally:
        flipper.join()
        proxy.close()
    assert proxy.dropped == 1  # the DELETE was applied and its answer lost
    with adamhub.Client(service_url) as direct, pytest.raises(adamhub.NotFoundError):
        direct.session(session.id)
    # A first DELETE of an unknown session is still an error.
    with adamhub.Client(service_url) as direct, pytest.raises(adamhub.NotFoundError):
        adamhub.Session(direct, _resource(session)).delete()


def _resource(session: adamhub.Session) -> dict[str, object]:
    return {"id": session.id, "t": 0, "size": session.size, "dtype": "float32", "optimizer": {}}


def test_the_service_command_without_its_dependencies_says_what_to_install() -> None:
    # As after `pip install adamhub` without the service extra: uvicorn cannot be imported.
    code = (
        "import sys; sys.modules['uvicorn'] = None; sys.modules['pydantic_settings'] = None; "
        "from adamhub_service.cli import main; raise SystemExit(main(['serve']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "pip install 'adamhub[service]'" in result.stderr
