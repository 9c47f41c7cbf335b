"""The web console in a real browser: Debian's headless Chromium driven by Playwright.

`playwright install` downloads a browser build from outside the package registries, so the
tests launch /usr/bin/chromium (installed by scripts/install-chromium.sh, which `make pytest`
runs first) and skip only when it is missing. Playwright's `launch()` gives every browser a
fresh temporary --user-data-dir of its own (it refuses one passed in `args`), and every test
gets a new browser context: empty localStorage, no cookies.

The sync API runs its own event loop in this thread while a browser is open, so tests in this
folder are plain functions, and the browser lives for one module only: async tests elsewhere
never run while it is open.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import ROOT, Process, free_port, serve

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ADMIN_KEY = "console-admin-key-4f1c9a"
# Screenshots go to docs/img only when asked (NOBUSY_SCREENSHOTS=1), so that a test run does
# not rewrite tracked files; otherwise they are still taken, into the test's tmp dir.
SCREENSHOTS = os.environ.get("NOBUSY_SCREENSHOTS") == "1"

CONSOLE_CONFIG = """
admin_key: "{admin}"
max_attempts: 4
retry_budget_min: 100000
upstreams:
  fake: {{kind: openai, base_url: "{fake}", first_token_timeout: 2, idle_timeout: 1,
          continuation: prefix}}
  backup: {{kind: openai, base_url: "{fake}", default_model: ok, continuation: prefix}}
  doomed: {{kind: openai, base_url: "{doomed}", default_model: ok,
            circuit: {{consecutive_failures: 1}}}}
  narrow: {{kind: openai, base_url: "{fake}", max_concurrency: 1}}
models:
  ok: [fake/ok]
  slow: ["fake/slow:chunk_delay=0.12"]
  reasoning: ["fake/reasoning:chunk_delay=0.05"]
  failover: ["fake/drop:drop_after=3", backup]
  doomed: [doomed]
  narrow: ["narrow/slow:chunk_delay=0.1"]
  promo: ["fake/ok:tail=请加微信：kxx_6688 预约，首单立减30元"]
crosscheck: {{embedder: none}}
"""


def start_console(tmp: Path, fake: Process, doomed_url: str | None = None) -> Process:
    """`nobusy serve` with the console's test config, in front of the shared fake upstream.

    ``failover``'s primary drops mid-stream after three chunks, so the answer is continued on
    ``backup``; ``narrow`` takes one request at a time, so a second one queues; ``doomed`` is
    the only route of its alias and opens its circuit at the first
    failure (point ``doomed_url`` at a fake that the test can stop); ``promo`` ends its answer
    with an advert, for the cross-check.
    """
    doomed = doomed_url or f"http://127.0.0.1:{free_port()}/v1"
    config = CONSOLE_CONFIG.format(admin=ADMIN_KEY, fake=f"{fake.url}/v1", doomed=doomed)
    return serve(tmp, config)


@pytest.fixture(scope="package")
def console(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """The console's gateway for the tests that neither create keys nor kill upstreams."""
    process = start_console(tmp_path_factory.mktemp("console"), fake_upstream)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for one test module."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `bash scripts/install-chromium.sh` (as root)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context (English, desktop size); a JS error or CSP violation fails it.

    Predicates for ``wait_for_function`` must be arrow functions: Playwright evaluates a bare
    expression with ``eval``, which the console's CSP rightly refuses.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Chromium reports what the CSP blocked (an inline style, an eval) as a console error.
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield page
    context.close()
    assert not errors, f"JavaScript errors or CSP violations on the page: {errors}"


def enter_keys(page: Page, api: str | None = None, admin: str | None = None) -> None:
    """Type keys into the Settings dialog as a user would, and save."""
    page.click("#settings-open")
    if api is not None:
        page.fill("#api-key", api)
    if admin is not None:
        page.fill("#admin-key", admin)
    page.click("#settings-form button[value=save]")
    page.wait_for_selector("#settings", state="hidden")


def ask(page: Page, model: str, question: str) -> None:
    """Pick a model, type a question and press Enter."""
    page.wait_for_selector(f"#model option[value='{model}']", state="attached")
    page.select_option("#model", model)
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")


def wait_answered(page: Page, count: int = 1, root: str = "#messages") -> None:
    """Wait until ``count`` answers under ``root`` are finished (their badge is shown)."""
    page.wait_for_function(
        "([root, n]) => document.querySelectorAll("
        "`${root} .msg-assistant[aria-busy=false]`).length >= n",
        arg=[root, count],
    )


@pytest.fixture()
def screenshot(tmp_path: Path) -> Callable[[Page, str], Path]:
    """Save a PNG of the page: into docs/img with NOBUSY_SCREENSHOTS=1, else into tmp."""

    def take(page: Page, name: str) -> Path:
        path = (ROOT / "docs" / "img" if SCREENSHOTS else tmp_path) / name
        page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000  # a real picture, not a blank page
        return path

    return take
