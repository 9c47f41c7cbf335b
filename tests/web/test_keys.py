"""The keys page: a key is created (its secret shown once), used, topped up and revoked.

A gateway of its own: once a key exists, every request to it needs one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page

from nobusy.testing.fake_upstream import answer_text
from tests.conftest import Process
from tests.web.conftest import ADMIN_KEY, ask, enter_keys, start_console, wait_answered

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def console(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_console(tmp_path_factory.mktemp("console-keys"), fake_upstream)
    yield process
    process.stop()


def open_keys_page(page: Page, console: Process) -> None:
    page.goto(f"{console.url}/#/keys")
    page.wait_for_selector("#keys-auth:not([hidden]), #keys-body:not([hidden])")
    if page.is_visible("#keys-auth"):  # the admin key is kept for the tab's lifetime only
        enter_keys(page, admin=ADMIN_KEY)
        page.wait_for_selector("#keys-body:not([hidden])")


def row(page: Page, name: str) -> str:
    return f"#keys-table tbody tr:has(td:first-child:text-matches('^{name} '))"


def test_a_key_is_shown_once_works_and_is_revoked(console: Process, page: Page) -> None:
    open_keys_page(page, console)
    assert "No keys yet" in page.inner_text("#keys-table")
    page.fill("#key-name", "team-a")
    page.select_option("#key-priority", "high")
    page.fill("#key-rpm", "60")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#new-key:not([hidden])")
    secret = page.input_value("#new-key-secret")
    assert secret.startswith("nb-") and len(secret) > 20
    # Shown in a field, never written into the page's markup or its address.
    assert secret not in page.content() and secret not in page.url
    page.wait_for_selector(row(page, "team-a"))
    prefix = page.inner_text(f"{row(page, 'team-a')} code")
    assert secret.startswith(prefix.rstrip("…"))
    assert "active" in page.inner_text(row(page, "team-a"))
    assert "60 rpm" in page.inner_text(row(page, "team-a"))

    page.click("#new-key-done")
    assert page.is_hidden("#new-key") and page.input_value("#new-key-secret") == ""

    # The key works; now that a key exists, the chat needs one too.
    models = httpx.get(f"{console.url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert models.status_code == 200
    page.goto(console.url)
    page.wait_for_selector("#model option:text('(enter an API key in Settings)')", state="attached")
    enter_keys(page, api=secret)
    ask(page, "ok", "With my own key")
    wait_answered(page)
    assert page.inner_text("#messages .answer") == answer_text(
        [{"role": "user", "content": "With my own key"}]
    )
    assert secret not in page.content()

    # Its usage shows on the status endpoint (the usage log is written off the hot path).
    deadline = time.monotonic() + 5
    while True:
        status = httpx.get(f"{console.url}/v1/nobusy/status", headers=ADMIN).json()
        usage = {row["name"]: row for row in status["keys"]["data"]}
        if "team-a" in usage or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert usage["team-a"]["requests"] == 1 and usage["team-a"]["completion_tokens"] > 0

    open_keys_page(page, console)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"{row(page, 'team-a')} button.danger")
    page.wait_for_selector(f"{row(page, 'team-a')} .status-revoked")
    refused = httpx.get(f"{console.url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 401


def test_a_key_with_a_quota_is_topped_up(console: Process, page: Page) -> None:
    open_keys_page(page, console)
    page.fill("#key-name", "team-b")
    page.fill("#key-quota", "100")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector(row(page, "team-b"))
    page.click("#new-key-done")
    assert page.inner_text(f"{row(page, 'team-b')} td.num") == "100 / 100"
    page.fill(f"{row(page, 'team-b')} input.topup-amount", "50")
    page.click(f"{row(page, 'team-b')} button:text('Top up')")
    page.wait_for_selector(f"{row(page, 'team-b')} td.num:text('150 / 150')")


def test_a_refused_key_is_explained(console: Process, page: Page) -> None:
    open_keys_page(page, console)
    page.fill("#key-name", "team-b")  # taken by the test above
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#key-form-error:not(:empty)")
    assert "team-b" in page.inner_text("#key-form-error")
    assert page.is_hidden("#new-key")
