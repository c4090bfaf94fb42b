"""The dashboard at /ui in a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

import adamhub
from adamhub_service.testing import ServiceProcess

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-results"


def chromium_path() -> str:
    found = os.environ.get("ADAMHUB_CHROMIUM") or next(
        (path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None
    )
    assert found, "the dashboard's test needs Chromium: apt-get install chromium (see .ci/run)"
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


def watch_requests(page: Page, base_url: str) -> list[str]:
    """Every URL the page asks for; the test asserts none leaves the service."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


def points_of(page: Page, chart: str) -> int:
    return int(page.get_attribute(f'[data-chart="{chart}"]', "data-points") or 0)


def test_the_list_and_a_live_session_page(
    browser: Browser, service_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = adamhub.Client(service_url, worker="ui-worker")
    session = client.create_session(size=64, name="dashboard-run", optimizer={"lr": 0.01})
    client.create_session(size=8, name="another-run")
    stop = threading.Event()

    def train() -> None:
        rng = np.random.default_rng(0)
        loss = 3.0
        while not stop.is_set():
            session.step(rng.normal(size=64).astype(np.float32), loss=loss)
            loss *= 0.995
            stop.wait(0.02)

    worker = threading.Thread(target=train)
    worker.start()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    urls = watch_requests(page, service_url)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{service_url}/ui")
        row = page.locator(f'tr[data-session="{session.id}"]')
        row.wait_for(timeout=10_000)
        assert "dashboard-run" in row.inner_text()
        page.fill("#search", "dashboard")
        page.wait_for_function(
            "() => document.querySelectorAll('#sessions tbody tr').length === 1", timeout=10_000
        )
        row.locator("a").click()
        page.wait_for_selector('[data-chart="loss"]')
        page.wait_for_function(
            "() => Number(document.querySelector('[data-chart=loss]').dataset.points) > 5",
            timeout=15_000,
        )
        before = points_of(page, "loss")
        grown = "n => Number(document.querySelector('[data-chart=loss]').dataset.points) > n"
        page.wait_for_function(grown, arg=before + 10, timeout=15_000)
        assert points_of(page, "grad_norm") > before  # every chart grows
        assert "ui-worker" in page.inner_text("#workers")
        assert "0.01" in page.inner_text("#settings")
        # An action: change the learning rate.
        page.fill("#lr-input", "0.005")
        page.click("#lr-form button")
        page.wait_for_function(
            "() => document.getElementById('action-result').textContent.includes('0.005')"
        )
        assert client.session(session.id).optimizer.lr == 0.005
        SCREENSHOTS.mkdir(exist_ok=True)
        shot = SCREENSHOTS / "dashboard-session.png"
        page.screenshot(path=str(shot), full_page=True)
        with capsys.disabled():  # in the test run's output, not only with -s
            print(f"\ndashboard screenshot: {shot}")
        assert shot.stat().st_size > 10_000
    finally:
        stop.set()
        worker.join(10)
        page.close()
        client.close()
    assert not errors, errors
    assert urls and all(url.startswith(service_url + "/") for url in urls), [
        url for url in urls if not url.startswith(service_url + "/")
    ]


def test_a_service_with_a_master_key_asks_for_one(
    browser: Browser, redis_url: str, tmp_path: Path
) -> None:
    master = "dashboard-master-key-0123456789abcdef"
    service = ServiceProcess(
        "--redis-url", redis_url, env={"ADAMHUB_MASTER_KEY": master}, log_path=tmp_path / "log"
    ).start()
    try:
        with adamhub.Client(service.base_url, api_key=master) as client:
            session = client.create_session(size=4, name="behind-a-key")
        page = browser.new_page()
        page.goto(f"{service.base_url}/ui")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "wrong-key-wrong-key-wrong-key")
        page.click("#key-form button")
        page.wait_for_function(
            "() => document.getElementById('key-error').textContent.includes('refused')"
        )
        page.fill("#key-input", master)
        page.click("#key-form button")
        page.locator(f'tr[data-session="{session.id}"]').wait_for(timeout=10_000)
        # Kept for the tab only: sessionStorage, not localStorage or a cookie.
        assert page.evaluate("() => sessionStorage.getItem('adamhub-api-key')") == master
        assert page.evaluate("() => localStorage.length") == 0
        assert page.context.cookies() == []
        page.close()
    finally:
        service.stop()


def test_the_list_shows_tags_and_filters_by_them(browser: Browser, service_url: str) -> None:
    with adamhub.Client(service_url) as client:
        both = client.create_session(size=2, name="tagged-both", tags=["ui-exp", "ui-gpu"])
        one = client.create_session(size=2, name="tagged-one", tags=["ui-exp"])
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{service_url}/ui")
        row = page.locator(f'tr[data-session="{both.id}"]')
        row.wait_for(timeout=10_000)
        assert [chip.inner_text() for chip in row.locator("button.tag").all()] == [
            "ui-exp",
            "ui-gpu",
        ]
        rows = (
            "() => [...document.querySelectorAll('#sessions tbody tr')].map(r => r.dataset.session)"
        )
        page.fill("#tag-filter", "ui-exp")
        page.wait_for_function(f"() => ({rows})().length === 2", timeout=10_000)
        assert set(page.evaluate(rows)) == {both.id, one.id}
        # A tag's chip adds it to the filter: only the session with both remains.
        row.locator('button.tag[data-tag="ui-gpu"]').click()
        page.wait_for_function(f"() => ({rows})().length === 1", timeout=10_000)
        assert page.evaluate(rows) == [both.id]
        assert page.input_value("#tag-filter") == "ui-exp ui-gpu"
        # The session page shows its tags.
        row.locator("a").click()
        page.wait_for_selector("#session-tags button.tag")
        assert page.inner_text("#session-tags").split() == ["ui-exp", "ui-gpu"]
    finally:
        page.close()
    assert not errors, errors


def test_the_session_page_shows_refusals_and_releases_a_quarantined_worker(
    browser: Browser, service_url: str
) -> None:
    screen = {"max_norm_ratio": 3, "window": 2, "quarantine_after": 1, "quarantine_seconds": 600}
    with adamhub.Client(service_url, worker="steady") as client:
        session = client.create_session(size=4, name="screened-run", screen=screen)
        for _ in range(2):
            session.step(np.ones(4, np.float32))
    noisy = adamhub.Client(service_url, worker="noisy")
    with noisy, pytest.raises(adamhub.OutlierGradientError):
        noisy.session(session.id).step(np.full(4, 1e3, np.float32))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{service_url}/ui#/s/{session.id}")
        page.wait_for_selector('#quarantined tr[data-worker="noisy"]', timeout=10_000)
        assert "outlier" in page.inner_text("#refusals")
        page.click('#quarantined button[data-worker="noisy"]')
        page.wait_for_selector("#quarantined", state="hidden", timeout=10_000)
        with adamhub.Client(service_url) as client:
            assert client.session(session.id).screening()["quarantined"] == {}
    finally:
        page.close()
    assert not errors, errors
