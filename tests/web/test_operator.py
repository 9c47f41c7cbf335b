"""The operator pages in Chromium: sign-in with a session cookie, usage, request log, keys.

A gateway of its own with the audit log on, so the request log shows content.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Page

from tests.conftest import Process, serve
from tests.web.conftest import ADMIN_KEY

CONFIG = """
admin_key: "{admin}"
audit: {{enabled: true}}
upstreams:
  fake: {{kind: openai, base_url: "{fake}", price: {{input: 2, output: 8}}}}
  dead: {{kind: openai, base_url: "http://127.0.0.1:9/v1", default_model: ok}}
models:
  ok: [fake/ok]
  failover: [dead, fake/ok]
"""


@pytest.fixture(scope="module")
def console(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("operator")
    process = serve(tmp, CONFIG.format(admin=ADMIN_KEY, fake=f"{fake_upstream.url}/v1"))
    client = openai.OpenAI(base_url=f"{process.url}/v1", api_key="unused", max_retries=0)
    for model in ("ok", "ok", "failover"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    yield process
    process.stop()


def sign_in(page: Page, console: Process) -> None:
    page.goto(f"{console.url}/#/usage")
    page.wait_for_selector("#signin-open:not([hidden])")
    page.click("#signin-open")
    page.fill("#signin-key", ADMIN_KEY)
    page.click("#signin-form button[value=signin]")
    page.wait_for_selector("#signin", state="hidden")


def test_sign_in_sets_a_strict_cookie_and_sign_out_revokes_it(console: Process) -> None:
    url = f"{console.url}/console/session"
    wrong = httpx.post(url, json={"admin_key": "not-it"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    good = httpx.post(url, json={"admin_key": ADMIN_KEY})
    assert good.status_code == 200
    cookie = good.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=" in cookie
    jar = {"nobusy_session": good.cookies["nobusy_session"]}
    assert httpx.get(f"{console.url}/v1/nobusy/requests", cookies=jar).status_code == 200
    # A state-changing call on the cookie must name its page's origin (CSRF).
    reset = f"{console.url}/v1/nobusy/upstreams/all/reset"
    assert httpx.post(reset, cookies=jar).status_code == 401
    assert httpx.post(reset, cookies=jar, headers={"Origin": console.url}).status_code == 200
    other = httpx.post(reset, cookies=jar, headers={"Origin": "https://evil.example"})
    assert other.status_code == 403
    assert httpx.delete(url, cookies=jar).status_code == 200
    assert httpx.get(f"{console.url}/v1/nobusy/requests", cookies=jar).status_code == 401
    # Failed sign-ins are audited (the event names are plain text in the chain's rows).
    deadline = time.monotonic() + 5  # the audit log is written off the request's path
    while True:
        with closing(sqlite3.connect(console.data_dir / "audit.db")) as audit:
            query = "SELECT event FROM audit WHERE event LIKE 'console%'"
            events = [r[0] for r in audit.execute(query)]
        if "console_sign_out" in events or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert events.count("console_sign_in") >= 2 and "console_sign_out" in events
    # The CLI's bearer path is unchanged.
    bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.get(f"{console.url}/v1/nobusy/requests", headers=bearer).status_code == 200


def test_bad_input_is_a_clear_400(console: Process) -> None:
    bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for path, param in [
        ("/v1/nobusy/usage/series?by=colour", "by"),
        ("/v1/nobusy/usage/series?from=yesterday", "from"),
        ("/v1/nobusy/usage/series?from=2026-02-01&to=2026-01-01", "from"),
        ("/v1/nobusy/requests?limit=0", "limit"),
        ("/v1/nobusy/requests?cursor=zzz", "cursor"),
        ("/v1/nobusy/requests?since=soon", "since"),
    ]:
        response = httpx.get(console.url + path, headers=bearer)
        assert response.status_code == 400, path
        assert response.json()["error"]["param"] == param
    assert httpx.get(f"{console.url}/v1/nobusy/requests/999999", headers=bearer).status_code == 404
    # Digits Python's isdigit takes but int() does not, and ids past 64 bits: 404, not a 500.
    for odd in ("7\u00b3", "\u0663", "9" * 30):
        missing = httpx.get(f"{console.url}/v1/nobusy/requests/{odd}", headers=bearer)
        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["param"] == "id"


def test_usage_page_charts_and_exports(
    console: Process, page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    sign_in(page, console)
    page.wait_for_selector("#usage-body:not([hidden]) #usage-table tbody tr")
    assert page.locator("#usage-chart svg polyline").count() >= 2
    page.select_option("#usage-by", "model")
    page.wait_for_selector("#usage-table tbody th:text('failover')")
    href = page.get_attribute("#usage-export", "href")
    assert href and href.startswith("/v1/nobusy/usage/export.csv?from=")
    csv = page.evaluate("(href) => fetch(href).then((r) => r.text())", href)
    lines = csv.strip().splitlines()
    assert lines[0].startswith("time,request_id,key_id") and len(lines) >= 4
    screenshot(page, "console-usage-en.png")
    page.click("#lang-toggle")
    page.wait_for_selector("#usage-heading:text('用量')")
    page.wait_for_selector("#usage-table tbody tr")
    screenshot(page, "console-usage-zh.png")


def test_request_log_filters_and_details(
    console: Process, page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    sign_in(page, console)
    page.goto(f"{console.url}/#/requests")
    page.wait_for_selector("#requests-table tbody tr[data-id]")
    assert page.locator("#requests-table tbody tr[data-id]").count() >= 3
    assert "dead → fake" in page.inner_text("#requests-table")
    page.fill("#requests-model", "failover")
    page.click("#requests-form button[type=submit]")
    page.wait_for_function(
        "() => document.querySelectorAll('#requests-table tbody tr[data-id]').length === 1"
    )
    deadline = time.monotonic() + 5  # the audit rows are written off the answer's path
    while True:
        page.click("#requests-table tbody tr[data-id] button")
        page.wait_for_selector("#request-detail[open]")
        if page.locator(".audit-event").count() or time.monotonic() > deadline:
            break
        page.click("#request-detail-close")
        time.sleep(0.3)
    assert "hi" in page.inner_text("#request-detail-events")  # the audited request's text
    screenshot(page, "console-requests-en.png")
    page.click("#request-detail-close")
    page.click("#lang-toggle")
    page.wait_for_selector("#requests-heading:text('请求日志')")
    page.wait_for_selector("#requests-table tbody tr[data-id]")
    screenshot(page, "console-requests-zh.png")


def test_keys_page_shows_budget_usage_and_last_used(
    console: Process, page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    page.goto(f"{console.url}/#/keys")
    page.wait_for_selector("#signin-open:not([hidden])")
    page.click("#signin-open")
    page.fill("#signin-key", "not the key")
    page.click("#signin-form button[value=signin]")
    page.wait_for_selector("#signin-error:not(:empty)")  # 401 (or 429 after a guessing run)
    page.fill("#signin-key", "")
    screenshot(page, "console-signin-en.png")
    page.click("#signin-form button[value=cancel]")
    bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
    group = httpx.post(
        f"{console.url}/v1/nobusy/groups", headers=bearer, json={"name": "eng", "budget": "50"}
    )
    assert group.status_code == 201, group.text
    made = httpx.post(
        f"{console.url}/v1/nobusy/keys",
        headers=bearer,
        json={"name": "team-a", "budget": "5", "budget_period": "monthly", "rpm": 60,
              "group": "eng"},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    client = openai.OpenAI(base_url=f"{console.url}/v1", api_key=secret, max_retries=0)
    client.chat.completions.create(model="ok", messages=[{"role": "user", "content": "hi"}])
    sign_in(page, console)
    page.goto(f"{console.url}/#/keys")
    row = "#keys-table tbody tr:has(td:first-child:text-matches('^team-a '))"
    deadline = time.monotonic() + 5  # the usage row is committed off the answer's path
    while "1 req" not in page.inner_text(row) and time.monotonic() < deadline:
        time.sleep(0.3)
        page.reload()
        page.wait_for_selector(row)
    headers = page.inner_text("#keys-table thead")
    assert "Budget" in headers and "Last 30 days" in headers and "Last used" in headers
    assert "Group" in headers
    text = page.inner_text(row)
    assert "of CN¥5.00 (monthly)" in text and "1 req" in text and "eng" in text
    # Past 80% of its budget a key's budget cell is marked, as the server's warning header is.
    assert page.locator(f"{row} td.budget-warn, {row} td.budget-over").count() == 0
    # A key with a budget and a group, made from the form.
    page.fill("#key-name", "team-b")
    page.fill("#key-budget", "2")
    page.select_option("#key-budget-period", "weekly")
    page.fill("#key-group", "eng")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#new-key:not([hidden])")
    page.click("#new-key-done")
    made_b = "#keys-table tbody tr:has(td:first-child:text-matches('^team-b '))"
    page.wait_for_selector(made_b)
    assert "of CN¥2.00 (weekly)" in page.inner_text(made_b) and "eng" in page.inner_text(made_b)
    # One answer spends most of a tiny budget: the cell is marked (soft limit or past it).
    tiny = httpx.post(
        f"{console.url}/v1/nobusy/keys", headers=bearer, json={"name": "team-c", "budget": "0.0001"}
    ).json()["secret"]
    spender = openai.OpenAI(base_url=f"{console.url}/v1", api_key=tiny, max_retries=0)
    spender.chat.completions.create(model="ok", messages=[{"role": "user", "content": "hi"}])
    page.reload()
    marked = "#keys-table tbody tr:has(td:first-child:text-matches('^team-c ')) td"
    page.wait_for_selector(f"{marked}.budget-warn, {marked}.budget-over")
    screenshot(page, "console-keys-en.png")
    page.click("#lang-toggle")
    page.wait_for_selector("#keys-heading:text('API 密钥')")
    page.wait_for_selector(row)
    assert "（每月）" in page.inner_text(row) and "（每周）" in page.inner_text(made_b)
    screenshot(page, "console-keys-zh.png")
    page.click("#lang-toggle")
    # Signing out ends the session: the admin pages ask again.
    page.click("#signin-open")
    page.goto(f"{console.url}/#/requests")
    page.wait_for_selector("#requests-auth:not([hidden])")


def test_guessing_the_key_is_rate_limited(console: Process) -> None:
    url = f"{console.url}/console/session"
    codes = [httpx.post(url, json={"admin_key": f"guess-{i}"}).status_code for i in range(22)]
    assert set(codes) <= {401, 429} and codes[-1] == 429
    # The right key still signs in from the same address (a shared NAT is not locked out).
    assert httpx.post(url, json={"admin_key": ADMIN_KEY}).status_code == 200
    bad = httpx.post(url, content=b"admin_key=x", headers={"content-type": "text/plain"})
    assert bad.status_code == 415
