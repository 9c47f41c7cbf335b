"""The status board and ``GET /v1/nobusy/status``: circuits, load, rates, for the admin key."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page

from nobusy.metrics import Metrics
from nobusy.web.status import counter_totals
from tests.conftest import Process, start_fake
from tests.web.conftest import ADMIN_KEY, enter_keys, start_console

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def doomed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A fake upstream of its own, for the test that kills it."""
    process = start_fake(tmp_path_factory.mktemp("doomed"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def console(
    fake_upstream: Process, doomed: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("console-status")
    process = start_console(tmp, fake_upstream, doomed_url=f"{doomed.url}/v1")
    yield process
    process.stop()


def chat(console: Process, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{console.url}/v1/chat/completions", json=body, timeout=10)


def test_counter_totals_sum_over_other_labels() -> None:
    metrics = Metrics()
    metrics.requests.labels("a", "x", "ok").inc(2)
    metrics.requests.labels("b", "y", "ok").inc()
    metrics.requests.labels("b", "y", "upstream_error").inc()
    assert counter_totals(metrics.registry, "nobusy_requests", "outcome") == {
        "ok": 3.0,
        "upstream_error": 1.0,
    }
    assert counter_totals(metrics.registry, "nobusy_tokens", "type") == {}


def test_status_needs_the_admin_key(console: Process) -> None:
    response = httpx.get(f"{console.url}/v1/nobusy/status")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    wrong = {"Authorization": "Bearer not-the-key"}
    assert httpx.get(f"{console.url}/v1/nobusy/status", headers=wrong).status_code == 401


def test_status_totals_grow_with_requests(console: Process) -> None:
    before = httpx.get(f"{console.url}/v1/nobusy/status", headers=ADMIN).json()
    for _ in range(3):
        assert chat(console, "ok").status_code == 200
    after = httpx.get(f"{console.url}/v1/nobusy/status", headers=ADMIN).json()
    assert after["object"] == "nobusy.status"
    assert after["time"] > before["time"] >= after["started"]
    assert after["requests"]["total"] - before["requests"]["total"] == 3
    assert after["requests"]["by_outcome"]["ok"] >= 3
    # The fake answers "hi" with 12 completion tokens and counts one prompt token.
    completion = [s["tokens"]["by_type"].get("completion", 0) for s in (before, after)]
    assert completion[1] - completion[0] == 36
    assert after["in_flight"] == 0
    assert set(after["queue"]) == {"high", "normal", "low"}
    # No keys exist: the usage log's rows have no key, and show as one group.
    assert after["keys"]["window"] == 3600
    assert [row["key_id"] for row in after["keys"]["data"]] in ([], [None])


def test_the_board_shows_an_open_circuit_once_an_upstream_dies(
    console: Process, doomed: Process, page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    assert chat(console, "doomed").status_code == 200
    page.goto(f"{console.url}/#/status")
    # Without the admin key the board says what it needs; the key is typed into Settings.
    page.wait_for_selector("#status-auth:not([hidden])")
    assert "admin key" in page.inner_text("#status-auth")
    enter_keys(page, admin=ADMIN_KEY)
    card = page.locator("#status-upstreams .card[data-upstream=doomed]")
    card.wait_for()
    assert card.locator(".pill.state").get_attribute("data-state") == "closed"
    assert ADMIN_KEY not in page.url and ADMIN_KEY not in page.content()

    doomed.stop()
    assert chat(console, "doomed").status_code == 503
    # The board polls every 2 s: within two polls the circuit shows open, with the error.
    page.wait_for_selector(
        "#status-upstreams .card[data-upstream=doomed] .pill.state[data-state=open]",
        timeout=6_000,
    )
    assert "open circuit" in card.inner_text()
    assert card.locator(".last-error").inner_text() != "Last error: none"
    assert (
        page.locator("#status-upstreams .card[data-upstream=fake] .pill.state").get_attribute(
            "data-state"
        )
        == "closed"
    )

    # Some traffic across a poll, so the rates and their charts have something to draw.
    for _ in range(5):
        chat(console, "ok")
        time.sleep(0.45)
    tiles = page.inner_text("#status-tiles")
    assert "Requests/s" in tiles and "Tokens/s" in tiles and "Queue" in tiles
    assert page.locator("#status-tiles .sparkline polyline").count() >= 1
    screenshot(page, "console-status.png")


def test_the_chinese_board_uses_chinese_units(
    console: Process, browser: Browser, screenshot: Callable[[Page, str], Path]
) -> None:
    assert chat(console, "ok").status_code == 200  # a first-token time to show
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    try:
        page = context.new_page()
        page.goto(f"{console.url}/#/status")
        enter_keys(page, admin=ADMIN_KEY)
        page.locator("#status-upstreams .card[data-upstream=fake]").wait_for()
        text = page.inner_text("#status-tiles") + page.inner_text("#status-upstreams")
        assert "秒" in text, text
        # No English unit after a number: not "2 min 30 s", "12 ms" or "0.25 s".
        assert not re.search(r"\d\s*(ms|s|min|h)\b", text), text
        screenshot(page, "console-status-zh.png")
    finally:
        context.close()
