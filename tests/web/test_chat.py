"""The chat and compare views in a browser: streaming, reasoning, failover notes, stop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page

from nobusy.testing.fake_upstream import answer_text, reasoning_text
from tests.conftest import Process
from tests.web.conftest import ask, wait_answered


def answer_for(question: str) -> str:
    return answer_text([{"role": "user", "content": question}])


# Records every distinct text of the newest answer until it is finished (window.seenDone):
# proof that the text grew in steps on screen, not that it arrived whole.
WATCH_GROWTH = """
() => {
  window.seen = [];
  const observer = new MutationObserver(() => {
    const answers = document.querySelectorAll("#messages .msg-assistant");
    const last = answers[answers.length - 1];
    if (!last) return;
    const text = last.querySelector(".answer").innerText;
    if (text && window.seen[window.seen.length - 1] !== text) window.seen.push(text);
    if (last.getAttribute("aria-busy") === "false") {
      observer.disconnect();
      window.seenDone = true;
    }
  });
  observer.observe(document.getElementById("messages"),
                   {subtree: true, childList: true, characterData: true, attributes: true});
}
"""


def test_an_answer_streams_in_and_is_kept(console: Process, page: Page) -> None:
    page.goto(console.url)
    question = "What is streaming?"
    page.wait_for_selector("#model option[value='slow']", state="attached")
    page.evaluate(WATCH_GROWTH)
    ask(page, "slow", question)
    page.wait_for_function("() => window.seenDone === true")
    seen: list[str] = page.evaluate("window.seen")

    expected = answer_for(question)
    assert seen[-1] == expected
    growing = [text for text in seen if expected.startswith(text)]
    assert len(growing) >= 4, seen  # 12 chunks 0.12 s apart, drawn once per frame
    badge = page.inner_text("#messages .msg-assistant .badge")
    assert "fake/slow" in badge and "first token" in badge and "tokens" in badge
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("#messages [aria-label='Copy answer']")
    assert page.evaluate("() => navigator.clipboard.readText()") == expected

    # Kept in localStorage: a reload shows the same conversation.
    page.reload()
    page.wait_for_selector("#messages .msg-assistant .answer")
    assert page.inner_text("#messages .msg-user") == question
    assert page.inner_text("#messages .msg-assistant .answer") == expected
    assert page.inner_text("#conv-list [aria-current=true]") == question


def test_reasoning_is_shown_then_folded_once_the_answer_starts(
    console: Process, page: Page
) -> None:
    page.goto(console.url)
    question = "Think first"
    ask(page, "reasoning", question)
    # While it thinks, the reasoning is open to watch...
    page.wait_for_selector("#messages details.reasoning[open]:not([hidden])")
    wait_answered(page)
    # ...and folded away as soon as the answer started.
    details = page.locator("#messages details.reasoning")
    assert details.get_attribute("open") is None
    messages = [{"role": "user", "content": question}]
    reasoning = details.locator(".reasoning-body").text_content() or ""
    assert reasoning.strip() == reasoning_text(messages)
    assert page.inner_text("#messages .answer") == answer_text(messages)
    details.locator("summary").click()
    assert details.get_attribute("open") is not None


def test_a_failover_mid_answer_is_noted_and_the_text_is_seamless(
    console: Process, page: Page
) -> None:
    page.goto(console.url)
    question = "Do not drop me"
    ask(page, "failover", question)
    wait_answered(page)
    assert page.inner_text("#messages .answer") == answer_for(question)
    note = page.inner_text("#messages .notes li")
    assert "failed mid-answer" in note and "continued on backup" in note
    # backup's prefix completion is configured, not checked: the note must not claim more.
    assert "not checked" in note and "without repeating" not in note
    badge = page.inner_text("#messages .badge")
    assert "fake/drop:drop_after=3 → backup" in badge and "failover" in badge


def test_a_queued_request_shows_its_place_then_streams(console: Process, page: Page) -> None:
    page.goto(console.url)
    page.wait_for_selector("#model option[value='narrow']", state="attached")
    body = {"model": "narrow", "messages": [{"role": "user", "content": "first"}], "stream": True}
    # Hold narrow's only slot with a streaming request while the page asks.
    with httpx.stream("POST", f"{console.url}/v1/chat/completions", json=body) as held:
        lines = held.iter_lines()  # kept: a dropped iterator would close the stream
        assert next(lines).startswith("data:")
        ask(page, "narrow", "Am I queued?")
        page.wait_for_selector("#messages .msg-status:text-matches('Queued: position 1, about')")
        for _ in lines:
            pass
    wait_answered(page)
    assert page.is_hidden("#messages .msg-status")
    assert page.inner_text("#messages .answer") == answer_for("Am I queued?")
    assert "from narrow/slow:chunk_delay=0.1" in page.inner_text("#messages .badge")


def test_escape_stops_and_regenerate_answers_again(console: Process, page: Page) -> None:
    page.goto(console.url)
    question = "Stop me"
    ask(page, "slow", question)
    page.wait_for_function(
        "() => document.querySelector('#messages .answer')?.textContent.length > 0"
    )
    page.keyboard.press("Escape")
    wait_answered(page)
    assert "Stopped." in page.inner_text("#messages .notes")
    partial = page.inner_text("#messages .answer")
    assert partial and answer_for(question).startswith(partial) and partial != answer_for(question)
    assert page.is_visible("#send") and not page.is_visible("#stop")

    page.click("#regenerate")
    page.wait_for_function(
        "() => document.querySelector('#messages .msg-assistant')"
        "?.getAttribute('aria-busy') === 'true'"
    )
    wait_answered(page)
    assert page.locator("#messages .msg-assistant").count() == 1
    assert page.inner_text("#messages .answer") == answer_for(question)


def test_conversations_can_be_renamed_exported_and_deleted(
    console: Process, page: Page, tmp_path: Path
) -> None:
    page.goto(console.url)
    ask(page, "ok", "First chat")
    wait_answered(page)
    page.click("#conv-new")
    ask(page, "ok", "Second chat")
    wait_answered(page)
    assert page.locator("#conv-list li").count() == 2

    page.click("#conv-list [aria-label='Rename: Second chat']")
    page.fill("#conv-list input", "Renamed")
    page.press("#conv-list input", "Enter")
    assert page.inner_text("#conv-list [aria-current=true]") == "Renamed"

    with page.expect_download() as download:
        page.click("#conv-export")
    exported = (tmp_path / "chat.md").resolve()
    download.value.save_as(exported)
    text = exported.read_text()
    assert text.startswith("# Renamed") and answer_for("Second chat") in text

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#conv-list [aria-label='Delete: Renamed']")
    assert page.locator("#conv-list li").count() == 1
    stored: list[dict[str, Any]] = page.evaluate(
        "JSON.parse(localStorage.getItem('nobusy.conversations'))"
    )
    assert [c["title"] for c in stored] == ["First chat"]


def test_compare_streams_several_models_side_by_side(console: Process, page: Page) -> None:
    page.goto(f"{console.url}/#/compare")
    page.wait_for_selector("#compare-models input[value=failover]")
    for box in page.locator("#compare-models input").all():
        box.uncheck()
    for model in ("ok", "reasoning", "failover"):
        page.check(f"#compare-models input[value={model}]")
    question = "Which is best?"
    page.fill("#compare-prompt", question)
    page.press("#compare-prompt", "Enter")
    wait_answered(page, 3, root="#compare-panels")
    panels = page.locator("#compare-panels .compare-panel")
    assert [panels.nth(i).locator("h2").inner_text() for i in range(3)] == [
        "ok",
        "reasoning",
        "failover",
    ]
    for i in range(3):
        assert panels.nth(i).locator(".answer").inner_text() == answer_for(question)
    assert "failed mid-answer" in panels.nth(2).locator(".notes").inner_text()


def test_chat_screenshot(
    console: Process, page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    page.goto(console.url)
    ask(page, "reasoning", "Why does nobusy never say the server is busy?")
    wait_answered(page)
    ask(page, "failover", "And when an upstream drops mid-answer?")
    wait_answered(page, 2)
    page.locator("#messages details.reasoning").first.locator("summary").click()
    screenshot(page, "console-chat.png")
