"""The pages whose tests run in English, once more in Chinese (a zh-CN browser): the text is
Chinese, nothing is left in English where a string exists, and the README gets both pictures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.conftest import Process
from tests.web.conftest import ask, wait_answered
from tests.web.test_crosscheck import cross_check


@pytest.fixture()
def zh_page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh Chinese context; a JS error fails it, as the English ``page`` does."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_chat_in_chinese(
    console: Process, zh_page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    zh_page.goto(console.url)
    assert zh_page.inner_text("nav a[data-view=chat]") == "对话"
    ask(zh_page, "reasoning", "为什么 nobusy 从不说服务器繁忙？")
    wait_answered(zh_page)
    ask(zh_page, "failover", "上游在回答中途断开时会怎样？")
    wait_answered(zh_page, 2)
    zh_page.locator("#messages details.reasoning").first.locator("summary").click()
    screenshot(zh_page, "console-chat-zh.png")


def test_cross_check_in_chinese(
    console: Process, zh_page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    cross_check(zh_page, console.url, ("ok", "promo", "doomed"), "空调不制冷怎么办？")
    promo = zh_page.locator("#compare-panels .compare-panel").nth(2)
    pill = promo.locator(".verdict .pill")
    assert pill.get_attribute("data-verdict") == "promotional"
    assert pill.inner_text() != "Promotional"  # the verdict is said in Chinese
    screenshot(zh_page, "console-crosscheck-zh.png")


def test_sign_in_in_chinese(
    console: Process, zh_page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    zh_page.goto(f"{console.url}/#/usage")
    zh_page.wait_for_selector("#signin-open:not([hidden])")
    zh_page.click("#signin-open")
    zh_page.wait_for_selector("#signin-key")
    assert "管理密钥" in zh_page.inner_text("#signin")
    screenshot(zh_page, "console-signin-zh.png")
