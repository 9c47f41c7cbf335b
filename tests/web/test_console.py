"""The console as a page: served offline with strict headers, usable by keyboard and on a phone,
in English and Chinese."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest
from playwright.sync_api import Browser, Page

from nobusy.testing.fake_upstream import answer_text
from nobusy.web.console import SECURITY_HEADERS, STATIC_DIR
from tests.conftest import Process
from tests.web.conftest import ADMIN_KEY, ask, enter_keys, wait_answered


class _InlineCode(HTMLParser):
    """Finds what a `script-src 'self'; style-src 'self'` CSP would block in a document."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        for name in names:
            if name.startswith("on") or name == "style":
                self.found.append(f"<{tag} {name}>")
        if tag == "style":
            self.found.append("<style>")
        if tag == "script":
            if not names.get("src"):
                self.found.append("inline <script>")
            else:
                self.sources.append(names["src"] or "")
        for value in names.values():
            if value and value.strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag}> javascript: URL")


def test_the_page_and_its_assets_carry_the_security_headers(console: Process) -> None:
    for path in (
        "/",
        "/static/js/main.js",
        "/static/console.css",
        "/static/vendor/marked/marked.esm.js",
    ):
        response = httpx.get(console.url + path)
        assert response.status_code == 200, path
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value, (path, name)
    csp = httpx.get(console.url + "/").headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert (
        httpx.get(console.url + "/static/js/main.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )
    assert httpx.get(console.url + "/static/nothing.js").status_code == 404


def test_the_page_has_no_inline_script_style_or_handler(console: Process) -> None:
    parser = _InlineCode()
    parser.feed(httpx.get(console.url + "/").text)
    assert parser.found == []
    assert parser.sources == ["/static/js/main.js"]
    # Nor may the scripts write inline styles or handlers into the page, or load from afar.
    for script in (STATIC_DIR / "js").glob("*.js"):
        text = script.read_text()
        assert not re.search(r"\.style\b|setAttribute\(\s*[\"'](style|on\w+)", text), script
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), script
        assert "innerHTML" not in text and "eval(" not in text, script


def test_the_page_works_offline_with_vendored_libraries(console: Process, page: Page) -> None:
    outside: list[str] = []
    page.on(
        "request",
        lambda request: (
            outside.append(request.url)
            if not request.url.startswith((console.url, "data:", "blob:"))
            else None
        ),
    )
    page.goto(console.url)
    ask(page, "ok", "Offline?")
    wait_answered(page)
    assert outside == []
    licences = (STATIC_DIR / "vendor" / "README.md").read_text()
    for library in ("marked", "dompurify", "highlight.js", "eventsource-parser"):
        assert library in licences


def test_markdown_is_rendered_sanitised_and_code_gets_a_copy_button(
    console: Process, browser: Browser
) -> None:
    # Not the `page` fixture: Chromium reports the onerror handler below as a CSP violation
    # when DOMPurify's inert parser meets it. That is the CSP blocking it, as designed.
    context = browser.new_context()
    page = context.new_page()
    reports: list[str] = []
    page.on("console", lambda message: reports.append(message.text))
    try:
        page.goto(console.url)
        page.wait_for_selector("#model option[value='ok']", state="attached")
        # Render as the chat does, with the page's own module: a model's markdown is untrusted.
        rendered = page.evaluate(
            """async () => {
              const { renderMarkdown } = await import('/static/js/markdown.js');
              const box = document.createElement('div');
              renderMarkdown(box, '# Title\\n\\n<img src=x onerror="window.pwned=1">' +
                '<script>window.pwned=2</script>[link](javascript:alert(1))\\n\\n' +
                '```python\\nprint("hi")\\n```\\n');
              document.body.append(box);
              await new Promise((r) => setTimeout(r, 100));
              return { html: box.innerHTML, pwned: window.pwned ?? null,
                       code: box.querySelector('pre code')?.className,
                       button: box.querySelector('pre button.copy-code')?.textContent };
            }"""
        )
    finally:
        context.close()
    assert rendered["pwned"] is None
    assert "onerror" not in rendered["html"] and "<script" not in rendered["html"]
    assert "javascript:" not in rendered["html"]
    assert "hljs" in rendered["code"] and "language-python" in rendered["code"]
    assert rendered["button"] == "Copy"
    blocked = [r for r in reports if "Content Security Policy" in r]
    assert all("inline event handler" in r for r in blocked), blocked


def test_keyboard_only_tab_to_the_input_and_send_with_enter(console: Process, page: Page) -> None:
    page.goto(console.url)
    page.wait_for_selector("#model option[value='ok']", state="attached")
    # The first Tab lands on the skip link, which takes focus to the message box.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "skip-link"
    assert page.is_visible("#skip-link")
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "prompt"

    # Without the skip link, the box is reached by tabbing through labelled controls.
    page.reload()
    page.wait_for_selector("#model option[value='ok']", state="attached")
    visited: list[str] = []
    for _ in range(20):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => { const e = document.activeElement;
                       return e.id || e.getAttribute('aria-label') || e.textContent.trim(); }"""
        )
        visited.append(focused)
        if focused == "prompt":
            break
    assert visited[-1] == "prompt", visited
    assert visited.index("model") < visited.index("prompt")
    page.keyboard.type("Typed, not clicked")
    page.keyboard.press("Enter")
    wait_answered(page)
    expected = answer_text([{"role": "user", "content": "Typed, not clicked"}])
    assert page.inner_text("#messages .answer") == expected
    # Focus comes back to the box for the next message.
    assert page.evaluate("() => document.activeElement.id") == "prompt"


def test_every_control_has_a_name(console: Process, page: Page) -> None:
    page.goto(console.url)
    page.wait_for_selector("#model option[value='ok']", state="attached")
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('button, input, select, textarea, a[href]')]
             .filter((e) => !(e.labels?.length || e.getAttribute('aria-label')
                               || e.textContent.trim() || e.getAttribute('aria-labelledby')))
             .map((e) => e.outerHTML.slice(0, 80))"""
    )
    assert unnamed == []


@pytest.mark.parametrize("view", ["chat", "compare", "status", "keys"])
def test_a_375_px_screen_has_no_horizontal_scroll(
    console: Process, browser: Browser, view: str
) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, locale="en-US")
    page = context.new_page()
    try:
        page.goto(console.url)
        if view == "chat":
            ask(
                page,
                "failover",
                "A long question " * 8 + "withaverylongwordthatmustwrapsomewhere" * 3,
            )
            wait_answered(page)
        else:
            page.goto(f"{console.url}/#/{view}")
            if view in ("status", "keys"):
                enter_keys(page, admin=ADMIN_KEY)
                page.wait_for_selector(f"#{view}-body:not([hidden])")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 375, f"{view}: the page is {width} px wide"
    finally:
        context.close()


def test_the_language_follows_the_browser_and_can_be_switched(
    console: Process, browser: Browser
) -> None:
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    try:
        page.goto(console.url)
        assert page.inner_text("nav a[data-view=chat]") == "对话"
        assert page.get_attribute("html", "lang") == "zh-CN"
        assert (
            page.get_attribute("#prompt", "placeholder")
            == "输入消息（Enter 发送，Shift+Enter 换行）"
        )
        page.click("#lang-toggle")
        assert page.inner_text("nav a[data-view=chat]") == "Chat"
        assert page.get_attribute("html", "lang") == "en"
        page.reload()  # the choice is remembered
        assert page.inner_text("#send") == "Send"
    finally:
        context.close()
