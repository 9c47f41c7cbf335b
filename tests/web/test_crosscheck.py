"""The Compare view's Cross-check switch: answers through ``/v1/nobusy/crosscheck`` with their
verdicts, flagged spans (hover or tap says why), shared sentences shaded and failed sources."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Browser, Page

from nobusy.testing.fake_upstream import answer_text
from tests.conftest import Process

ADVERT = "请加微信：kxx_6688 预约，首单立减30元"  # what the console config's `promo` adds


def cross_check(page: Page, url: str, models: tuple[str, ...], question: str) -> None:
    """Tick ``models``, turn the switch on, ask, and wait for the analysis."""
    page.goto(f"{url}/#/compare")
    page.wait_for_selector("#compare-models input[value=promo]")
    for box in page.locator("#compare-models input").all():
        box.uncheck()
    for model in models:
        page.check(f"#compare-models input[value={model}]")
    page.check("#compare-crosscheck")
    page.fill("#compare-prompt", question)
    page.press("#compare-prompt", "Enter")
    page.wait_for_selector("#compare-summary:not([hidden])")


def test_the_cross_check_marks_the_advert_and_the_failed_source(
    console: Process, page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    question = "空调不制冷怎么办？"
    cross_check(page, console.url, ("ok", "promo", "doomed"), question)
    panels = page.locator("#compare-panels .compare-panel")
    # In the order of the model list, as Compare asks them.
    assert [panels.nth(i).locator("h2").inner_text() for i in range(3)] == [
        "ok",
        "doomed",
        "promo",
    ]
    ok, doomed, promo = (panels.nth(i) for i in range(3))
    assert "Agreement between the answers" in page.inner_text("#compare-summary")

    pill = promo.locator(".verdict .pill")
    assert pill.get_attribute("data-verdict") == "promotional"
    assert pill.inner_text() == "Promotional"
    assert ok.locator(".verdict .pill").get_attribute("data-verdict") == "clean"
    # The answer is the service's text exactly, flagged pieces marked inside it.
    asked = [{"role": "user", "content": question}]
    assert promo.locator(".answer").text_content() == f"{answer_text(asked)} {ADVERT}"
    contact = promo.locator("mark.flag[data-types~=contact_or_purchase_path]").first
    assert contact.text_content() in ADVERT
    title = contact.get_attribute("title") or ""
    assert title.startswith("Contact or purchase path (")
    contact.click()  # a tap writes the why under the answer
    assert promo.locator(".flag-detail").inner_text() == title
    # The sentence both answers say is shaded in each; the advert, said by one, is not.
    assert ok.locator(".supported").count() > 0
    assert promo.locator(".supported").first.text_content() in answer_text(asked)
    assert ok.locator("mark").count() == 0

    assert "failed" in (doomed.get_attribute("class") or "")
    assert doomed.locator(".verdict .pill").inner_text() == "Failed"
    assert "Error:" in doomed.locator(".notes").inner_text()
    screenshot(page, "console-crosscheck.png")


def test_on_a_phone_in_chinese_the_text_stays_text(console: Process, browser: Browser) -> None:
    context = browser.new_context(
        viewport={"width": 375, "height": 740}, locale="zh-CN", is_mobile=True, has_touch=True
    )
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        question = "<b>空调</b>不制冷怎么办？"
        cross_check(page, console.url, ("ok", "promo"), question)
        assert page.inner_text("label[for=compare-crosscheck]").strip() == "交叉核对"
        assert "回答之间的一致度" in page.inner_text("#compare-summary")
        promo = page.locator("#compare-panels .compare-panel").nth(1)  # after ok
        assert promo.locator(".verdict .pill").inner_text() == "推广"
        assert page.locator("#compare-panels b").count() == 0
        assert "<b>空调</b>" in (promo.locator(".answer").text_content() or "")
        mark = promo.locator("mark.flag").first
        mark.tap()
        assert promo.locator(".flag-detail").inner_text() == mark.get_attribute("title")
        assert "：" in (mark.get_attribute("title") or "")  # the zh template
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 375, f"the page is {width} px wide"
    finally:
        context.close()
    assert not errors
