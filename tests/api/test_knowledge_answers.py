"""Cited answers: an alias with `knowledge` grounds its answers in a store's passages.

The store is filled in-process (the same KnowledgeBase a server opens) before the server
starts, since the alias names the store's id. The fake upstream repeats the question in its
answer, so a question that says "[1]" gets an answer that cites passage 1.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from nobusy.knowledge.base import KnowledgeBase
from nobusy.settings import Settings
from nobusy.store.knowledge import Caller
from tests.conftest import Process, free_port, serve, start_fake

POLICY = """# 年假制度

员工每年享有十五天年假，需提前三天申请。

# 联系人

人事部王经理，电话 13812345678。
"""


def fill(data_dir: Path) -> tuple[str, str, str]:
    """A store holding the policy, ingested, and a ``local_only`` one:
    (store id, file id, local store id)."""
    kb = KnowledgeBase(Settings(data_dir=data_dir))
    try:
        secret = kb.records.create_store(
            None, "secret", kb.default_model, {"local_only": "true"}, None
        )
        store = kb.records.create_store(None, "hr", kb.default_model, {}, None)
        file_id = "file-" + "0" * 24
        size, digest = kb.blobs.write(file_id, io.BytesIO(POLICY.encode()))
        kb.records.add_file(file_id, None, "policy.md", "assistants", size, digest)
        kb.records.attach(store.id, file_id, {}, None)
        kb.ingestor.ingest(store.id, file_id)
        placed = kb.records.store_file(store.id, file_id)
        assert placed is not None and placed.status == "completed", placed
        assert kb.records.store(Caller(None, admin=True), store.id) is not None
    finally:
        kb.close()
    return store.id, file_id, secret.id


@pytest.fixture(scope="module")
def grounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, Process, str]]:
    """(nobusy, its private fake upstream, the file id) with aliases grounded in the store."""
    tmp = tmp_path_factory.mktemp("grounded")
    store_id, file_id, secret_id = fill(tmp / "data")
    fake = start_fake(tmp)
    config = f"""
audit: {{enabled: true, store: full}}
upstreams:
  fake: {{kind: openai, base_url: "{fake.url}/v1"}}
  dead: {{kind: openai, base_url: "http://127.0.0.1:{free_port()}/v1", default_model: ok}}
  lan: {{kind: openai, base_url: "{fake.url}/v1", local: true}}
models:
  hr-bot: {{routes: [fake/ok], knowledge: {{stores: [{store_id}], top_k: 2}}}}
  hr-failover: {{routes: [dead, fake/ok], knowledge: {{stores: [{store_id}]}}}}
  hr-private: {{routes: [fake/ok], knowledge: {{stores: [{store_id}]}}, pii: {{enabled: true}}}}
  plain: [fake/ok]
  secret-remote: {{routes: [lan/ok, fake/ok], knowledge: {{stores: [{secret_id}]}}}}
  secret-local: {{routes: [lan/ok], knowledge: {{stores: [{secret_id}]}}}}
"""
    try:
        process = serve(tmp, config)
    except BaseException:
        fake.stop()
        raise
    yield process, fake, file_id
    process.stop()
    fake.stop()


def ask(process: Process, model: str, question: str, **kwargs: Any) -> Any:
    """The answer; a stream's chunks, read before the client closes."""
    with openai.OpenAI(base_url=f"{process.url}/v1", api_key="-", max_retries=0) as sdk:
        answer = sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], **kwargs
        )
        return list(answer) if kwargs.get("stream") else answer


def sent_upstream(fake: Process) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{fake.url}/_fake/last").json()
    return body


def test_passages_go_into_the_prompt_and_come_back_as_citations(
    grounded: tuple[Process, Process, str],
) -> None:
    process, fake, file_id = grounded
    answer = ask(process, "hr-bot", "年假有几天？[1]")
    system = sent_upstream(fake)["messages"][0]
    assert system["role"] == "system" and "[1] (policy.md)" in system["content"]
    assert "十五天年假" in system["content"]
    cited: Any = answer.model_extra["nobusy"]
    assert cited["cited"] == [1] and not cited["uncited"] and cited["invalid"] == []
    first = cited["citations"][0]
    assert first["index"] == 1 and first["file_id"] == file_id and first["filename"] == "policy.md"
    assert first["cited"] and first["snippet"] and first["end"] > first["start"]
    assert len(cited["citations"]) <= 2  # top_k


def test_an_answer_citing_nothing_is_marked(grounded: tuple[Process, Process, str]) -> None:
    process, _, _ = grounded
    plain: Any = ask(process, "hr-bot", "年假有几天？").model_extra["nobusy"]
    assert plain["uncited"] and plain["cited"] == []
    wrong: Any = ask(process, "hr-bot", "年假有几天？[9]").model_extra["nobusy"]
    assert wrong["uncited"] and wrong["invalid"] == [9]
    assert "nobusy" not in (ask(process, "plain", "hi").model_extra or {})


def test_streamed_answers_end_with_the_citations(grounded: tuple[Process, Process, str]) -> None:
    process, _, _ = grounded
    chunks = ask(process, "hr-bot", "年假怎么申请？[2]", stream=True)
    extras = [c.model_extra["nobusy"] for c in chunks if (c.model_extra or {}).get("nobusy")]
    assert len(extras) == 1 and extras[0]["cited"] == [2]
    assert chunks[-1].model_extra and chunks[-1].model_extra.get("nobusy")  # the last event
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Fake answer to: 年假怎么申请？[2].")


def test_failover_keeps_the_passages(grounded: tuple[Process, Process, str]) -> None:
    process, fake, _ = grounded
    answer = ask(process, "hr-failover", "年假有几天？[1]")
    assert answer.model_extra["nobusy"]["cited"] == [1]
    assert "十五天年假" in sent_upstream(fake)["messages"][0]["content"]


def test_passages_are_masked_before_they_leave(grounded: tuple[Process, Process, str]) -> None:
    """PII masking sees the passages like the user's words: the phone number in the
    document never reaches the upstream."""
    process, fake, _ = grounded
    ask(process, "hr-private", "人事部联系人的电话是多少？[1]")
    sent = orjson.dumps(sent_upstream(fake)).decode()
    assert "13812345678" not in sent and "王经理" in sent


def test_local_only_stores_never_reach_a_remote_upstream(
    grounded: tuple[Process, Process, str],
) -> None:
    process, _, _ = grounded
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(process, "secret-remote", "年假有几天？")
    error: Any = caught.value.body
    assert error["code"] == "local_only_store" and "fake" in error["message"]
    assert ask(process, "secret-local", "年假有几天？").choices[0].message.content


def test_the_audit_names_the_documents_retrieved(grounded: tuple[Process, Process, str]) -> None:
    process, _, file_id = grounded
    ask(process, "hr-bot", "audit me: 年假有几天？")
    time.sleep(0.3)  # the audit writer flushes every 50 ms
    export = subprocess.run(
        [sys.executable, "-m", "nobusy", "audit", "export", "--since", "1d", "--decrypt"]
        + ["--data-dir", str(process.data_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
        check=True,
    )
    rows = [json.loads(line) for line in export.stdout.splitlines() if line.strip()]
    requests = [r["content"] for r in rows if "audit me" in json.dumps(r, ensure_ascii=False)]
    retrieved = [r["nobusy_retrieved"] for r in requests if "nobusy_retrieved" in r]
    assert retrieved and retrieved[-1][0]["file_id"] == file_id
    assert retrieved[-1][0]["filename"] == "policy.md"


def test_a_request_names_its_own_stores(grounded: tuple[Process, Process, str]) -> None:
    """``x-nobusy-knowledge``: an alias without stores answers from those the request names;
    an unknown or malformed store is refused before anything is sent."""
    process, fake, file_id = grounded
    with openai.OpenAI(base_url=f"{process.url}/v1", api_key="-", max_retries=0) as sdk:
        stores = {s.name: s.id for s in sdk.vector_stores.list()}
        answer = sdk.chat.completions.create(
            model="plain",
            messages=[{"role": "user", "content": "年假有几天？[1]"}],
            extra_headers={"x-nobusy-knowledge": stores["hr"]},
        )
        cited: Any = answer.model_extra["nobusy"]
        assert cited["cited"] == [1] and cited["citations"][0]["file_id"] == file_id
        assert "十五天年假" in sent_upstream(fake)["messages"][0]["content"]

        with pytest.raises(openai.NotFoundError) as missing:
            sdk.chat.completions.create(
                model="plain",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-nobusy-knowledge": "vs_" + "f" * 24},
            )
        assert missing.value.body["param"] == "x-nobusy-knowledge"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError):
            sdk.chat.completions.create(
                model="plain",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-nobusy-knowledge": "../etc"},
            )
        # A local_only store named by a request whose alias may go off premises: 403.
        with pytest.raises(openai.PermissionDeniedError):
            sdk.chat.completions.create(
                model="plain",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-nobusy-knowledge": stores["secret"]},
            )


def test_responses_file_search_runs_in_nobusy(grounded: tuple[Process, Process, str]) -> None:
    """The Responses ``file_search`` tool: nobusy searches the store, the fake upstream never
    sees the tool, and the answer has a ``file_search_call`` and ``file_citation`` annotations
    (whole and streamed alike)."""
    process, fake, file_id = grounded
    with openai.OpenAI(base_url=f"{process.url}/v1", api_key="-", max_retries=0) as sdk:
        store = {s.name: s.id for s in sdk.vector_stores.list()}["hr"]
        tool: Any = {"type": "file_search", "vector_store_ids": [store], "max_num_results": 3}
        response = sdk.responses.create(model="plain", input="年假有几天？[1]", tools=[tool])
        sent = sent_upstream(fake)
        assert "tools" not in sent and "十五天年假" in sent["messages"][0]["content"]
        call, message = response.output[0], response.output[1]
        assert call.type == "file_search_call" and call.status == "completed"
        assert call.queries == ["年假有几天？[1]"]
        assert message.type == "message"
        text = message.content[0]
        assert text.type == "output_text"
        note = text.annotations[0]
        assert note.type == "file_citation" and note.file_id == file_id
        assert note.filename == "policy.md" and text.text[note.index :].startswith("[1]")
        assert response.tools[0].type == "file_search"

        with sdk.responses.stream(model="plain", input="年假有几天？[1]", tools=[tool]) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        assert kinds.index("response.file_search_call.completed") < kinds.index(
            "response.output_text.delta"
        )
        assert "response.output_text.annotation.added" in kinds
        assert final.output[0].type == "file_search_call"
        annotated = final.output[1].content[0]  # type: ignore[union-attr]
        assert annotated.annotations[0].file_id == file_id  # type: ignore[union-attr]

        with pytest.raises(openai.NotFoundError):
            sdk.responses.create(
                model="plain",
                input="hi",
                tools=[{"type": "file_search", "vector_store_ids": ["vs_" + "e" * 24]}],
            )
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.responses.create(
                model="plain",
                input="hi",
                tools=[{"type": "file_search", "vector_store_ids": [store], "max_num_results": 0}],
            )
        assert bad.value.body["param"] == "tools[0].max_num_results"  # type: ignore[index]


def test_attaching_a_store_live_grounds_the_next_answer(
    grounded: tuple[Process, Process, str],
) -> None:
    """``PATCH /v1/nobusy/aliases/{name}`` with ``knowledge``: the reload swaps the routing
    table the grounding reads, so the next answer cites the store; ``null`` takes it away."""
    process, _, file_id = grounded
    admin = f"{process.url}/v1/nobusy/aliases/plain"
    with openai.OpenAI(base_url=f"{process.url}/v1", api_key="-", max_retries=0) as sdk:
        store = {s.name: s.id for s in sdk.vector_stores.list()}["hr"]
    attached = httpx.patch(admin, json={"knowledge": {"stores": [store], "top_k": 1}})
    assert attached.status_code == 200, attached.text
    assert attached.json()["after"]["knowledge"] == {"stores": [store], "top_k": 1}
    try:
        cited: Any = ask(process, "plain", "年假有几天？[1]").model_extra["nobusy"]
        assert cited["cited"] == [1] and cited["citations"][0]["file_id"] == file_id
        assert len(cited["citations"]) == 1
    finally:
        detached = httpx.patch(admin, json={"knowledge": None})
    assert detached.status_code == 200 and detached.json()["after"]["knowledge"] is None
    assert "nobusy" not in (ask(process, "plain", "年假有几天？[1]").model_extra or {})
