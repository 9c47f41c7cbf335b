"""The knowledge page and cited answers in a browser: stores, uploads with progress and
failures, the retrieval test with matched words marked, who answers from a store (attached and
detached live by the admin, the YAML for an API key), and [n] in an answer that shows its
passage.

The server has one store filled in-process before it starts (an alias must name its id), with
the alias ``hr-bot`` grounded in it; the fake upstream repeats the question, so a question
that says "[1]" gets an answer citing passage 1.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Page

from nobusy.knowledge.base import KnowledgeBase
from nobusy.settings import Settings
from tests.conftest import Process, serve
from tests.web.conftest import ADMIN_KEY, ask, enter_keys, wait_answered

POLICY = """# 年假制度

员工每年享有十五天年假，需提前三天申请。

# 报销

差旅报销须在出差结束后十个工作日内提交。
"""

MANUAL = b"""# Vault procedures

The branch vault opens at nine in the morning. Two officers must be present to open the vault.
"""


def fill(data_dir: Path) -> str:
    """A store "hr" holding the policy, ingested; its id."""
    kb = KnowledgeBase(Settings(data_dir=data_dir))
    try:
        store = kb.records.create_store(None, "hr", kb.default_model, {}, None)
        file_id = "file-" + "1" * 24
        size, digest = kb.blobs.write(file_id, io.BytesIO(POLICY.encode()))
        kb.records.add_file(file_id, None, "policy.md", "assistants", size, digest)
        kb.records.attach(store.id, file_id, {}, None)
        kb.ingestor.ingest(store.id, file_id)
    finally:
        kb.close()
    return store.id


@pytest.fixture(scope="module")
def grounded(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, str]]:
    """(nobusy with a grounded alias, the store's id)."""
    tmp = tmp_path_factory.mktemp("kb-console")
    store_id = fill(tmp / "data")
    config = f"""
admin_key: "{ADMIN_KEY}"
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1"}}
models:
  ok: [fake/ok]
  hr-bot: {{routes: [fake/ok], knowledge: {{stores: [{store_id}], top_k: 2}}}}
"""
    process = serve(tmp, config)
    yield process, store_id
    process.stop()


def open_knowledge(page: Page, server: Process) -> None:
    page.goto(f"{server.url}/#/knowledge")
    enter_keys(page, admin=ADMIN_KEY)
    page.wait_for_selector("#kb-body:not([hidden])")


def test_stores_uploads_and_failures(grounded: tuple[Process, str], page: Page) -> None:
    server, _ = grounded
    page.on("dialog", lambda dialog: dialog.accept())
    open_knowledge(page, server)
    page.fill("#kb-name", "Vault")
    page.check("#kb-local")
    page.click("#kb-create button[type=submit]")
    page.wait_for_selector("#kb-list [aria-current=true] >> text=Vault")
    assert "local only" in page.inner_text("#kb-list [aria-current=true]")
    assert "local only" in page.inner_text("#kb-store-facts")

    # The picker: one good file and one the parsers refuse, each with its own bar.
    page.set_input_files(
        "#kb-pick",
        files=[
            {"name": "vault.md", "mimeType": "text/markdown", "buffer": MANUAL},
            {"name": "empty.txt", "mimeType": "text/plain", "buffer": b""},
        ],
    )
    # Drag and drop: a DataTransfer with a file, dropped on the zone.
    transfer = page.evaluate_handle(
        """() => {
          const data = new DataTransfer();
          data.items.add(new File(["Opening hours: the vault opens at nine."], "hours.txt",
                                  {type: "text/plain"}));
          return data;
        }"""
    )
    page.dispatch_event("#kb-drop", "drop", {"dataTransfer": transfer})
    page.wait_for_function(
        "() => document.querySelectorAll('#kb-uploads .kb-upload.done').length === 2"
        " && document.querySelectorAll('#kb-uploads .kb-upload.failed').length === 1"
    )
    failed = page.inner_text("#kb-uploads .kb-upload.failed")
    assert "empty.txt" in failed and "failed" in failed and "empty" in failed.split("failed", 1)[1]
    assert page.eval_on_selector("#kb-uploads .kb-upload.done progress", "p => p.value") == 100

    # The files table: names, states, and the failure's reason.
    page.wait_for_function(
        "() => document.querySelectorAll('#kb-files tbody tr').length === 3"
        " && !document.querySelector('#kb-files').innerText.includes('indexing')"
    )
    table = page.inner_text("#kb-files tbody")
    assert "vault.md" in table and "hours.txt" in table and "empty.txt" in table
    assert "ready" in table and "The file is empty" in table
    assert "3 files" in page.inner_text("#kb-list [aria-current=true]")

    # The retrieval test: ranked passages, scores, the query's words marked.
    page.fill("#kb-query", "When does the vault open?")
    page.click("#kb-search button[type=submit]")
    page.wait_for_selector("#kb-results .kb-hit")
    hits = page.locator("#kb-results .kb-hit")
    assert hits.count() == 2
    assert "score" in hits.first.inner_text()
    marked = {m.lower() for m in page.locator("#kb-results mark").all_inner_texts()}
    assert {"vault", "open"} <= marked

    # Deleting the store (the confirm is accepted) takes it off the list.
    page.click("#kb-delete")
    page.wait_for_function("() => !document.querySelector('#kb-list').innerText.includes('Vault')")


def test_chinese_search_and_the_aliases_that_use_a_store(
    grounded: tuple[Process, str], page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    server, store_id = grounded
    open_knowledge(page, server)
    page.click("#kb-list button.kb-open >> text=hr")
    page.wait_for_function("() => document.querySelector('#kb-store-name').textContent === 'hr'")
    assert "Answering from it: hr-bot." in page.inner_text("#kb-aliases")
    # The admin attaches it live (test_attach_and_detach_a_store_live); the YAML is for keys.
    assert page.is_visible("#kb-attach") and page.is_hidden("#kb-yaml-box")
    assert page.input_value("#kb-alias") == "ok"  # the first alias not answering from it

    page.fill("#kb-query", "年假有几天")
    page.click("#kb-search button[type=submit]")
    page.wait_for_selector("#kb-results .kb-hit mark")
    first = page.inner_text("#kb-results .kb-hit >> nth=0")
    assert "十五天年假" in first and "policy.md" in first
    assert "年假" in page.locator("#kb-results .kb-hit >> nth=0").locator("mark").all_inner_texts()
    screenshot(page, "console-knowledge.png")

    # The same page in Chinese.
    page.click("#lang-toggle")
    page.wait_for_function("() => document.querySelector('#kb-heading').textContent === '知识库'")
    assert "依据它作答的模型：hr-bot" in page.inner_text("#kb-aliases")
    assert page.inner_text("#kb-attach") == "关联"
    page.click("#kb-search button[type=submit]")
    page.wait_for_selector("#kb-results .kb-hit >> text=得分")
    screenshot(page, "console-knowledge-zh.png")


def test_citations_show_their_passage(
    grounded: tuple[Process, str], page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    server, _ = grounded
    page.goto(server.url)
    ask(page, "hr-bot", "年假有几天？[1]")
    wait_answered(page)
    answer = page.locator("#messages .msg-assistant")
    cite = answer.locator(".answer button.cite")
    assert cite.inner_text() == "[1]"
    assert "Sources" in answer.locator(".cite-panel").inner_text()
    cite.click()
    passage = answer.locator(".cite-passage")
    assert "policy.md" in passage.inner_text() and "十五天年假" in passage.inner_text()
    screenshot(page, "console-chat-citations.png")
    cite.click()
    assert passage.is_hidden()

    # An answer that cites nothing it was given is marked.
    ask(page, "hr-bot", "报销要多久？")
    wait_answered(page, 2)
    last = page.locator("#messages .msg-assistant >> nth=1")
    assert "cites none" in last.locator(".cite-heading").inner_text()
    assert last.locator(".answer button.cite").count() == 0

    # Kept with the conversation: a reload shows the buttons again.
    page.reload()
    page.wait_for_selector("#messages .answer button.cite")


def test_an_api_key_sees_only_its_own_stores(grounded: tuple[Process, str], page: Page) -> None:
    """With an ordinary API key (no admin key, no sign-in) the page lists the stores that key
    made or was granted, and searches them; the admin's store stays out of sight."""
    server, _ = grounded
    made = httpx.post(
        f"{server.url}/v1/nobusy/keys",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"name": "branch"},
    )
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0) as sdk:
        own = sdk.vector_stores.create(name="branch-notes")
        document = sdk.files.create(file=("vault.md", MANUAL), purpose="assistants")
        sdk.vector_stores.files.create_and_poll(vector_store_id=own.id, file_id=document.id)

    page.goto(f"{server.url}/#/knowledge")
    enter_keys(page, api=secret)
    page.wait_for_selector("#kb-list >> text=branch-notes")
    listed = page.inner_text("#kb-list")
    assert "branch-notes" in listed and "hr" not in listed.split()
    page.click("#kb-list button.kb-open >> text=branch-notes")
    # An API key cannot edit aliases: no buttons, but the YAML that attaches the store.
    page.wait_for_selector("#kb-yaml-box:not([hidden])")
    assert page.is_hidden("#kb-attach") and page.is_hidden("#kb-detach")
    page.select_option("#kb-alias", "ok")
    yaml = page.inner_text("#kb-yaml")
    assert "  ok:" in yaml and "routes: [fake/ok]" in yaml and own.id in yaml
    assert "top_k: 6" in yaml
    page.fill("#kb-query", "When does the vault open?")
    page.click("#kb-search button[type=submit]")
    page.wait_for_selector("#kb-results .kb-hit")
    assert "vault.md" in page.inner_text("#kb-results .kb-hit >> nth=0")


def test_attach_and_detach_a_store_live(
    grounded: tuple[Process, str], page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    """The admin attaches the store to ``ok`` from the page: the alias's next answer, through
    the OpenAI SDK, cites it; detached, it answers without citations. A refused edit shows the
    API's message; a store the config file attaches cannot be detached here, and says so."""
    server, store_id = grounded
    admin = httpx.Client(
        base_url=f"{server.url}/v1/nobusy", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    made = httpx.post(
        f"{server.url}/v1/nobusy/keys",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"name": "attach"},
    )
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]  # once a key exists, every chat needs one
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
    with admin, sdk:
        assert admin.post("/aliases", json={"name": "gone", "routes": ["fake/ok"]}).is_success
        open_knowledge(page, server)
        page.click("#kb-list button.kb-open >> text=hr")
        page.wait_for_selector("#kb-alias option[value=gone]", state="attached")

        # An alias removed meanwhile: the API's refusal is shown, the list refreshed.
        assert admin.delete("/aliases/gone").is_success
        page.select_option("#kb-alias", "gone")
        page.click("#kb-attach")
        page.wait_for_selector("#kb-attach-error >> text=Error: No alias named 'gone'.")
        page.wait_for_selector("#kb-alias option[value=gone]", state="detached")

        page.select_option("#kb-alias", "ok")
        assert page.is_disabled("#kb-detach")
        page.click("#kb-attach")
        page.wait_for_selector("#kb-attach-status >> text=ok now answers from it")
        assert page.inner_text("#kb-attach-error") == ""
        page.wait_for_selector("#kb-aliases >> text=Answering from it: ok, hr-bot.")
        assert page.is_disabled("#kb-attach") and page.is_enabled("#kb-detach")
        config = admin.get("/aliases/ok").json()
        assert config["knowledge"] == {"stores": [store_id], "top_k": 6}  # the default top_k

        question = [{"role": "user", "content": "年假有几天？[1]"}]
        answer = sdk.chat.completions.create(model="ok", messages=question)
        cited: Any = (answer.model_extra or {})["nobusy"]
        assert cited["cited"] == [1] and cited["citations"][0]["filename"] == "policy.md"
        page.locator("#kb-aliases").scroll_into_view_if_needed()
        screenshot(page, "console-knowledge-attach.png")

        page.click("#kb-detach")
        page.wait_for_selector("#kb-attach-status >> text=ok no longer answers from it")
        page.wait_for_selector("#kb-aliases >> text=Answering from it: hr-bot.")
        assert admin.get("/aliases/ok").json()["knowledge"] is None
        answer = sdk.chat.completions.create(model="ok", messages=question)
        assert "nobusy" not in (answer.model_extra or {})

        # hr-bot's store is in the config file: detaching it puts the file's value back.
        page.select_option("#kb-alias", "hr-bot")
        page.click("#kb-detach")
        page.wait_for_selector("#kb-attach-error >> text=the config file attaches it there")
        assert "hr-bot" in page.inner_text("#kb-aliases")
