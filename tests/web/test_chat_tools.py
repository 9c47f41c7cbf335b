"""What the chat offers beyond asking: a system prompt and parameters per conversation, editing
a sent message, regenerating with another model (both answers kept), search, attached files,
keyboard shortcuts, copying an answer as markdown, and a phone-sized layout."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, Page

from nobusy.testing.fake_upstream import answer_text
from tests.conftest import Process
from tests.knowledge.documents import pdf
from tests.web.conftest import ask, wait_answered


def answer_for(question: str) -> str:
    return answer_text([{"role": "user", "content": question}])


def sent_upstream(fake: Process) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{fake.url}/_fake/last").json()
    return body


def test_system_prompt_and_parameters_go_with_the_conversation(
    console: Process, fake_upstream: Process, page: Page
) -> None:
    page.goto(console.url)
    page.click("#chat-options summary")
    page.fill("#opt-system", "Answer like a pirate.")
    page.fill("#opt-temperature", "0.3")
    page.fill("#opt-top-p", "0.9")
    page.fill("#opt-max-tokens", "64")
    ask(page, "ok", "Where is the treasure?")
    wait_answered(page)
    sent = sent_upstream(fake_upstream)
    assert sent["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert sent["messages"][-1]["content"] == "Where is the treasure?"
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.3, 0.9, 64)

    # A new conversation starts with none; the first one keeps its own after a reload.
    page.click("#conv-new")
    assert page.input_value("#opt-system") == "" and page.input_value("#opt-temperature") == ""
    page.reload()
    page.wait_for_selector("#messages .msg-assistant")
    assert page.eval_on_selector("#chat-options", "d => d.open")
    assert page.input_value("#opt-system") == "Answer like a pirate."
    assert page.input_value("#opt-max-tokens") == "64"


def test_edit_a_sent_message_and_run_again(console: Process, page: Page) -> None:
    page.goto(console.url)
    ask(page, "ok", "First question")
    wait_answered(page)
    page.hover("#messages .msg-user")
    page.click("#messages button.msg-edit")
    page.fill("#messages .msg-user textarea", "Second question")
    page.click("#messages .msg-user button.primary")
    page.wait_for_function(
        "(want) => { const a = document.querySelector('#messages .msg-assistant .answer');"
        " return a && a.innerText === want"
        " && document.querySelector('#messages .msg-assistant[aria-busy=false]'); }",
        arg=answer_for("Second question"),
    )
    assert page.locator("#messages .msg-user").all_inner_texts()[0].startswith("Second question")
    assert page.locator("#messages .msg-assistant").count() == 1
    page.reload()
    page.wait_for_selector("#messages .msg-assistant .answer")
    assert page.inner_text("#messages .msg-assistant .answer") == answer_for("Second question")


def test_regenerate_with_another_model_keeps_both(
    console: Process, page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    page.goto(console.url)
    page.click("#chat-options summary")
    page.fill("#opt-system", "You are the bank's careful assistant.")
    page.fill("#opt-temperature", "0.2")
    ask(page, "ok", "Tell me twice")
    wait_answered(page)
    page.select_option("#model", "reasoning")
    page.click("#regenerate")
    page.wait_for_selector("#messages .variants")
    wait_answered(page)
    label = page.locator("#messages .variant-label")
    assert label.inner_text() == "2 / 2 · reasoning"
    assert page.locator("#messages .msg-assistant details.reasoning:not([hidden])").count() == 1
    screenshot(page, "console-chat-variants.png")
    page.click("#messages [aria-label='Previous answer']")
    assert page.inner_text("#messages .variant-label") == "1 / 2 · ok"
    assert page.locator("#messages .msg-assistant details.reasoning:not([hidden])").count() == 0
    assert page.locator("#messages .msg-assistant").count() == 1
    # The choice is kept with the conversation.
    page.reload()
    page.wait_for_selector("#messages .variants")
    assert page.inner_text("#messages .variant-label") == "1 / 2 · ok"


def test_search_and_shortcuts(console: Process, page: Page) -> None:
    page.goto(console.url)
    ask(page, "ok", "Apples are red")
    wait_answered(page)
    page.keyboard.press("Control+Shift+O")
    page.wait_for_function("() => !document.querySelector('#messages .msg')")
    page.fill("#prompt", "Bananas are yellow")
    page.press("#prompt", "Control+Enter")
    wait_answered(page)
    page.keyboard.press("Control+k")
    assert page.evaluate("() => document.activeElement.id") == "conv-search"
    page.keyboard.type("apples")
    page.wait_for_function("() => document.querySelectorAll('#conv-list li').length === 1")
    assert "Apples" in page.inner_text("#conv-list li")
    # The answer's words are searched too, not just the titles.
    page.fill("#conv-search", "fake answer bananas")
    assert page.locator("#conv-list li").count() == 1
    assert "Bananas" in page.inner_text("#conv-list li")
    page.fill("#conv-search", "")
    assert page.locator("#conv-list li").count() == 2

    page.keyboard.press("Control+/")
    page.wait_for_selector("#shortcuts[open]")
    assert "Ctrl" in page.inner_text("#shortcuts") and "Stop the answer" in page.inner_text(
        "#shortcuts"
    )
    page.keyboard.press("Escape")
    page.wait_for_selector("#shortcuts", state="hidden")

    # Escape stops a streaming answer.
    ask(page, "slow", "A long story")
    page.wait_for_selector("#stop:not([hidden])")
    page.wait_for_function(
        "() => document.querySelector('#messages .msg-assistant:last-child .answer').innerText"
    )
    page.keyboard.press("Escape")
    wait_answered(page, 1)
    page.wait_for_selector("#messages .msg-assistant >> text=Stopped.")


def test_attached_files_are_sent_as_text(
    console: Process, fake_upstream: Process, page: Page
) -> None:
    page.goto(console.url)
    page.set_input_files(
        "#attach-file",
        files=[
            {
                "name": "notes.md",
                "mimeType": "text/markdown",
                "buffer": "# 会议纪要\n明天开会。".encode(),
            },
            {"name": "terms.pdf", "mimeType": "application/pdf", "buffer": pdf("Loan rate 3.1")},
            {"name": "broken.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 nothing"},
        ],
    )
    page.wait_for_function(
        "() => [...document.querySelectorAll('#attachments li')].filter("
        "li => !li.innerText.includes('reading')).length === 3"
    )
    chips = page.locator("#attachments li").all_inner_texts()
    assert any("notes.md (" in c for c in chips) and any("terms.pdf (" in c for c in chips), chips
    assert page.locator("#attachments li.failed").count() == 1
    assert "broken.pdf" in page.inner_text("#attachments li.failed")
    page.click("#attachments li.failed button")
    ask(page, "ok", "Summarise these")
    wait_answered(page)
    content = sent_upstream(fake_upstream)["messages"][-1]["content"]
    assert content.startswith("Summarise these")
    assert '<document name="notes.md">' in content and "明天开会" in content
    assert '<document name="terms.pdf">' in content and "Loan rate 3.1" in content
    assert page.inner_text("#messages .msg-user .msg-text") == "Summarise these"
    assert "notes.md, terms.pdf" in page.inner_text("#messages .msg-user .msg-files")
    assert page.locator("#attachments li").count() == 0


def test_attached_files_go_into_the_conversations_knowledge_base(
    console: Process, fake_upstream: Process, page: Page
) -> None:
    """Ticked "into the knowledge base", files are uploaded, indexed with a progress line each,
    and every answer in the conversation searches them and cites the passages."""
    page.goto(console.url)
    policy = "# 年假制度\n\n员工每年享有十五天年假，需提前三天申请。\n"
    page.set_input_files(
        "#attach-file",
        files=[{"name": "leave.md", "mimeType": "text/markdown", "buffer": policy.encode()}],
    )
    page.wait_for_selector("#attach-store-choice:not([hidden])")
    page.check("#attach-store")
    ask(page, "ok", "年假有几天？[1]")
    wait_answered(page)
    system = sent_upstream(fake_upstream)["messages"][0]
    assert system["role"] == "system" and "十五天年假" in system["content"]
    assert "[1] (leave.md)" in system["content"]
    files = page.inner_text("#messages .msg-user .msg-files")
    assert "leave.md" in files and "📚" in files
    answer = page.locator("#messages .msg-assistant")
    assert answer.locator(".answer button.cite").inner_text() == "[1]"
    assert "leave.md" in answer.locator(".cite-panel").inner_text()
    # The next question in the conversation searches the same store; the file is not resent.
    ask(page, "ok", "需提前几天申请？[1]")
    wait_answered(page, 2)
    later = sent_upstream(fake_upstream)["messages"]
    assert "需提前三天申请" in later[0]["content"]
    assert all("<document" not in str(m["content"]) for m in later)


def test_extract_refuses_what_it_cannot_read(console: Process) -> None:
    url = f"{console.url}/v1/nobusy/extract"
    read = httpx.post(url, json={"filename": "a.md", "data": base64.b64encode(b"# Hi").decode()})
    assert read.status_code == 200 and read.json()["text"] == "# Hi"
    answer = httpx.post(url, json={"filename": "a.exe", "data": base64.b64encode(b"MZ").decode()})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "not supported" in answer.json()["error"]["message"]
    missing = httpx.post(url, json={"data": "aGk="})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "filename"
    garbled = httpx.post(url, json={"filename": "a.txt", "data": "not base64!"})
    assert garbled.status_code == 400 and garbled.json()["error"]["param"] == "data"


def test_copy_an_answer_as_markdown(console: Process, page: Page) -> None:
    page.goto(console.url)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    question = "Use **bold** and `code`"
    ask(page, "ok", question)
    wait_answered(page)
    page.click("#messages [aria-label='Copy answer']")
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied == answer_for(question) and "**bold**" in copied


def test_phone_layout(
    console: Process, browser: Browser, screenshot: Callable[[Page, str], Path]
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, locale="zh-CN")
    page = context.new_page()
    try:
        page.goto(console.url)
        ask(page, "ok", "手机上看得清吗？")
        wait_answered(page)
        overflow = "() => document.scrollingElement.scrollWidth <= window.innerWidth"
        assert page.evaluate(overflow)
        composer = page.locator("#composer").bounding_box()
        assert composer is not None and composer["x"] >= 0
        assert composer["x"] + composer["width"] <= 390
        assert page.inner_text("#attach") == "添加附件"
        screenshot(page, "console-chat-phone-zh.png")
        page.goto(f"{console.url}/#/knowledge")
        page.wait_for_selector("#kb-body:not([hidden])")
        assert page.evaluate(overflow)
    finally:
        context.close()
