"""The Upstreams page: an upstream added, tested and used, one disabled, and an edit that would
break the config refused with `nobusy check`'s message (nothing written); zh and en screenshots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

from tests.conftest import Process
from tests.web.conftest import ADMIN_KEY, enter_keys, start_console

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-upstreams")


@pytest.fixture(scope="module")
def console(fake_upstream: Process, folder: Path) -> Iterator[Process]:
    process = start_console(folder, fake_upstream)
    yield process
    process.stop()


def open_page(page: Page, console: Process) -> None:
    page.goto(f"{console.url}/#/upstreams")
    page.wait_for_selector("#upstreams-auth:not([hidden]), #upstreams-body:not([hidden])")
    if page.is_visible("#upstreams-auth"):
        enter_keys(page, admin=ADMIN_KEY)
        page.wait_for_selector("#upstreams-body:not([hidden])")


def row(name: str) -> str:
    return f"#upstreams-table tr[data-upstream='{name}']"


def test_add_test_disable_and_a_refused_edit(
    console: Process,
    fake_upstream: Process,
    folder: Path,
    page: Page,
    screenshot: Callable[[Page, str], Path],
) -> None:
    open_page(page, console)
    page.wait_for_selector(row("backup"))

    # Add an upstream, then an alias routed to it.
    page.fill("#up-name", "deepseek")
    page.select_option("#up-kind", "openai")
    page.fill("#up-base-url", f"{fake_upstream.url}/v1")
    page.fill("#up-api-key", "sk-console-typed-key-1")
    page.fill("#up-default-model", "ok")
    page.click("#up-submit")
    page.wait_for_selector(row("deepseek"))
    assert "Saved and applied" in page.inner_text("#up-form-status")
    page.fill("#alias-name", "chat-deepseek")
    page.fill("#alias-routes", "deepseek, backup")
    page.click("#alias-form button[type=submit]")
    page.wait_for_selector("#aliases-table tr[data-alias='chat-deepseek']")
    assert "deepseek → backup" in page.inner_text("#aliases-table tr[data-alias='chat-deepseek']")
    answer = httpx.post(
        f"{console.url}/v1/chat/completions",
        json={"model": "chat-deepseek", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer.headers["x-nobusy-upstream"] == "deepseek"

    # Test: a real one-token answer through it, its latency shown.
    page.click(f"{row('deepseek')} td.probe button")
    page.wait_for_selector(f"{row('deepseek')} .probe-result[data-status=ok]")
    assert page.inner_text(f"{row('deepseek')} .probe-result").startswith("ok · ")

    # Disable an upstream another route covers: applied at once.
    page.click(f"{row('backup')} button:text('Disable')")
    page.wait_for_selector(f"{row('backup')} td:text('no (disabled)')")

    # Disabling the only upstream of an alias would leave it nothing: refused, nothing written.
    managed = folder / "nobusy.managed.yaml"
    before = managed.read_bytes()
    page.click(f"{row('doomed')} button:text('Disable')")
    page.wait_for_selector("#up-form-error:text('every upstream of its routes is disabled')")
    assert page.inner_text("#up-form-error") == (
        "Error: config error: models.doomed: every upstream of its routes is disabled "
        "(doomed); enable one, or disable the alias too"
    )
    assert managed.read_bytes() == before
    assert "yes" in page.inner_text(row("doomed"))
    assert "sk-console-typed-key-1" not in managed.read_text()
    assert "sk-console-typed-key-1" not in page.content()
    screenshot(page, "console-upstreams.png")

    # The same page in Chinese.
    page.click("#lang-toggle")
    page.wait_for_selector("#upstreams-heading:text('上游与模型')")
    page.wait_for_selector(f"{row('backup')} td:text('否（已停用）')")
    page.click(f"{row('deepseek')} td.probe button")
    page.wait_for_selector(f"{row('deepseek')} .probe-result[data-status=ok]")
    assert page.inner_text(f"{row('deepseek')} .probe-result").startswith("正常 · ")
    page.click(f"{row('doomed')} button:text('停用')")  # refused again, said in Chinese around
    page.wait_for_selector("#up-form-error:text('出错：config error: models.doomed')")
    screenshot(page, "console-upstreams-zh.png")

    # Every change is in the admin API's view too; the API key never comes back.
    listed = httpx.get(f"{console.url}/v1/nobusy/upstreams", headers=ADMIN).json()
    rows = {r["name"]: r for r in listed["data"]}
    assert rows["deepseek"]["config"]["api_key"] == "********"
    assert rows["backup"]["enabled"] is False and rows["backup"]["managed"]
