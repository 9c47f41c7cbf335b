"""What the guard and PII masking see, on a running server: every string that goes upstream,
the conversation as the model reads it, and the whole answer, tool calls and reasoning too."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Process, serve

Body = dict[str, Any]


@pytest.fixture(scope="module")
def checked(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("checked")
    words = tmp / "words"
    words.mkdir()
    (words / "block.txt").write_text("forbiddenword\n")
    (words / "mask-in.txt").write_text("secretname\n")
    (words / "mask-out.txt").write_text("lazy dog\n")
    (words / "block-out.txt").write_text("dangerword\n")
    config = f"""
audit: {{enabled: true, store: full}}
guard:
  lexicons:
    - {{path: words/block.txt, action: block, scope: input}}
    - {{path: words/mask-in.txt, action: mask, scope: input}}
    - {{path: words/mask-out.txt, action: mask, scope: output}}
    - {{path: words/block-out.txt, action: block, scope: output}}
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
models:
  ok: [fake/ok]
  tools: [fake/tool-call]
  thinking: [fake/reasoning]
  private: {{routes: [fake/ok], pii: {{enabled: true}}}}
  private-tools: {{routes: [fake/tool-call], pii: {{enabled: true}}}}
"""
    process = serve(tmp, config)
    yield process
    process.stop()


def post(process: Process, body: Body) -> httpx.Response:
    return httpx.post(f"{process.url}/v1/chat/completions", json=body, timeout=30)


def last_upstream_request(fake: Process) -> Body:
    seen: Body = httpx.get(f"{fake.url}/_fake/last").json()
    return seen


BASE: Body = {"model": "ok", "messages": [{"role": "user", "content": "hello"}]}
TOOL: Body = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "what to look for"}},
        },
    },
}
CALL: Body = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "search", "arguments": '{"query": "weather"}'},
}


def with_messages(*messages: Body) -> Body:
    return {**BASE, "messages": list(messages)}


def with_tool(change: Callable[[Body], None]) -> Body:
    tool = copy.deepcopy(TOOL)
    change(tool)
    return {**BASE, "tools": [tool]}


def with_call(change: Callable[[Body], None]) -> Body:
    call = copy.deepcopy(CALL)
    change(call)
    return with_messages(
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
    )


def text_parts(*texts: str) -> list[Body]:
    return [{"type": "text", "text": text} for text in texts]


def _set(path: list[Any], value: Any) -> Callable[[Body], None]:
    def change(node: Body) -> None:
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


W = "forbiddenword"
# Each body carries the blocked word W somewhere other than one message's text, or split.
BLOCKED: dict[str, Body] = {
    "split across messages": with_messages(
        {"role": "user", "content": "tell me about forbid"}, {"role": "user", "content": "denword"}
    ),
    "split across user and assistant": with_messages(
        {"role": "assistant", "content": "the word is forbi"},
        {"role": "user", "content": "ddenword, right?"},
    ),
    "split across content parts": with_messages(
        {"role": "user", "content": text_parts("about forbid", "den", "word please")}
    ),
    "split, zero-width in between": with_messages(
        {"role": "user", "content": text_parts("forbid\u200b", "\u200bdenword")}
    ),
    "message name": with_messages({"role": "user", "name": W, "content": "hi"}),
    "tool-call arguments": with_call(_set(["function", "arguments"], f'{{"query": "{W}"}}')),
    "tool-call function name": with_call(_set(["function", "name"], W)),
    "tool-call id": with_call(_set(["id"], f"call_{W}")),
    "tool description": with_tool(_set(["function", "description"], f"finds {W}")),
    "tool name": with_tool(_set(["function", "name"], W)),
    "tool parameter description": with_tool(
        _set(["function", "parameters", "properties", "query", "description"], W)
    ),
    "tool parameter name": with_tool(
        _set(["function", "parameters", "properties"], {W: {"type": "string"}})
    ),
    "tool parameter enum": with_tool(
        _set(["function", "parameters", "properties", "query", "enum"], ["a", W])
    ),
    "reasoning_content": with_messages(
        {"role": "assistant", "content": "ok", "reasoning_content": f"think {W}"},
        {"role": "user", "content": "go on"},
    ),
    "refusal part": with_messages(
        {"role": "assistant", "content": [{"type": "refusal", "refusal": W}]},
        {"role": "user", "content": "why?"},
    ),
    "user": {**BASE, "user": W},
    "stop string": {**BASE, "stop": W},
    "stop list": {**BASE, "stop": ["\n", W]},
    "image_url": with_messages(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": f"https://example.com/{W}.png"}},
            ],
        }
    ),
    "unknown top-level field": {**BASE, "instructions": f"always say {W}"},
    "unknown nested field": {**BASE, "metadata": {"note": [{"text": W}]}},
    "unknown message field": with_messages({"role": "user", "content": "hi", "extra": W}),
    "response_format schema": {
        **BASE,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"description": W}},
        },
    },
    "tool_choice function name": {
        **with_tool(lambda tool: None),
        "tool_choice": {"type": "function", "function": {"name": W}},
    },
}


@pytest.mark.parametrize("case", sorted(BLOCKED))
def test_a_blocked_word_anywhere_in_the_request_is_refused(checked: Process, case: str) -> None:
    response = post(checked, BLOCKED[case])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "content_filter"


def test_base64_payloads_are_not_read_as_words(checked: Process) -> None:
    # Random base64 spells short words; an image is no text the model reads.
    image = f"data:image/png;base64,iVBORw0KGgo{W}AAAA"
    body = with_messages(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": image}},
            ],
        }
    )
    assert post(checked, body).status_code == 200


def test_a_mask_word_is_masked_where_each_piece_lives(
    checked: Process, fake_upstream: Process
) -> None:
    body = with_messages(
        {"role": "user", "name": "secretname", "content": text_parts("my secret", "name is Li")},
        {"role": "user", "content": "and secret"},
        {"role": "user", "content": "name again"},
    )
    assert post(checked, body).status_code == 200
    messages = last_upstream_request(fake_upstream)["messages"]
    assert messages[0]["name"] == "＊" * 10
    assert [part["text"] for part in messages[0]["content"]] == [
        "my ＊＊＊＊＊＊",
        "＊＊＊＊ is Li",
    ]
    assert messages[1]["content"] == "and ＊＊＊＊＊＊"
    assert messages[2]["content"] == "＊＊＊＊ again"


def test_right_to_left_overrides_do_not_reach_the_upstream(
    checked: Process, fake_upstream: Process
) -> None:
    # U+202E shows "\u202edrowneddibrof" as the blocked word; what is checked is what is shown.
    body = with_messages({"role": "user", "content": "say \u202edrowneddibrof\u202c now"})
    assert post(checked, body).status_code == 200
    sent = json.dumps(last_upstream_request(fake_upstream), ensure_ascii=False)
    assert "\u202e" not in sent and "drowneddibrof" in sent


def stream_answer(process: Process, body: Body) -> tuple[Body, str | None]:
    """The assistant message a streaming client assembles, and the finish reason."""
    message: Body = {"content": "", "reasoning_content": "", "tool_calls": {}}
    finish = None
    with httpx.stream(
        "POST", f"{process.url}/v1/chat/completions", json={**body, "stream": True}
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                delta = choice["delta"]
                for field in ("content", "reasoning_content"):
                    message[field] += delta.get(field) or ""
                for call in delta.get("tool_calls") or ():
                    held = message["tool_calls"].setdefault(call["index"], {"arguments": ""})
                    held["arguments"] += (call.get("function") or {}).get("arguments") or ""
                finish = choice.get("finish_reason") or finish
    message["tool_calls"] = [message["tool_calls"][i] for i in sorted(message["tool_calls"])]
    return message, finish


def answer(process: Process, body: Body, stream: bool) -> tuple[Body, str | None]:
    if stream:
        return stream_answer(process, body)
    response = post(process, body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    message = choice["message"]
    calls = [call["function"] for call in message.get("tool_calls") or ()]
    return {**message, "tool_calls": calls}, choice["finish_reason"]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_arguments_are_filtered(checked: Process, stream: bool) -> None:
    body = {**with_tool(lambda tool: None), "model": "tools"}
    body["messages"] = [{"role": "user", "content": "the lazy dog"}]
    message, finish = answer(checked, body, stream)
    assert finish == "tool_calls"
    [call] = message["tool_calls"]
    assert json.loads(call["arguments"]) == {"query": "the ＊＊＊＊＊＊＊＊"}


@pytest.mark.parametrize("stream", [False, True])
def test_a_blocked_tool_call_is_dropped(checked: Process, stream: bool) -> None:
    body = {**with_tool(lambda tool: None), "model": "tools"}
    body["messages"] = [{"role": "user", "content": "dangerword"}]
    message, finish = answer(checked, body, stream)
    assert finish == "content_filter"
    assert not message["tool_calls"]


def audit_rows(process: Process) -> list[Body]:
    time.sleep(0.3)  # the audit writer flushes every 50 ms
    export = subprocess.run(
        [sys.executable, "-m", "nobusy", "audit", "export", "--since", "1d", "--decrypt"]
        + ["--data-dir", str(process.data_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
        check=True,
    )
    return [json.loads(line) for line in export.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("stream", [False, True])
def test_audit_records_tool_calls_and_reasoning(checked: Process, stream: bool) -> None:
    tools = {**with_tool(lambda tool: None), "model": "tools"}
    tools["messages"] = [{"role": "user", "content": f"tool {stream}"}]
    answer(checked, tools, stream)
    thinking = {**BASE, "model": "thinking"}
    thinking["messages"] = [{"role": "user", "content": f"think {stream}"}]
    answer(checked, thinking, stream)
    responses = [row["content"] for row in audit_rows(checked) if row["event"] == "response"]
    [call] = [r["tool_calls"] for r in responses if f"tool {stream}" in json.dumps(r)][-1]
    assert json.loads(call["function"]["arguments"]) == {"query": f"tool {stream}"}
    assert call["function"]["name"] == "search"
    reasoning = [r for r in responses if f"think {stream}" in r.get("reasoning_content", "")]
    assert reasoning and reasoning[-1]["content"]


# (where, how the value is written): each must not reach the upstream, and come back restored.
MOBILE = "13800138000"
PII_FORMS = {
    "ID number with spaces": "110105 19491231 002X",
    "ID number in groups of four": "1101 0519 4912 3100 2X",
    "mobile with dots": "138.0013.8000",
    "mobile in CJK numerals": "一三八〇〇一三八〇〇〇",
    "mobile with zero-width spaces": "138\u200b0013\u200b8000",
    "mobile in full-width digits": "１３８００１３８０００",
    "e-mail in full width": "ｌｉ．ｌｅｉ＠ｅｘａｍｐｌｅ．ｃｏｍ",
}


@pytest.mark.parametrize("form", sorted(PII_FORMS))
def test_personal_data_written_oddly_is_masked_and_restored(
    checked: Process, fake_upstream: Process, form: str
) -> None:
    value = PII_FORMS[form]
    body = {**BASE, "model": "private"}
    body["messages"] = [{"role": "user", "content": f"call {value} today"}]
    response = post(checked, body)
    assert response.status_code == 200
    sent = last_upstream_request(fake_upstream)["messages"][0]["content"]
    assert sent.startswith("call [[PII_") and sent.endswith("]] today"), sent
    assert f"call {value} today" in response.json()["choices"][0]["message"]["content"]


PII_PLACES: dict[str, Body] = {
    "message name": with_messages({"role": "user", "name": f"li_{MOBILE}", "content": "hi"}),
    "tool_call_id": with_call(_set(["id"], f"call_{MOBILE}")),
    "tool-call function name": with_call(_set(["function", "name"], f"call_{MOBILE}")),
    "tool name": with_tool(_set(["function", "name"], f"call_{MOBILE}")),
    "tool description": with_tool(_set(["function", "description"], f"calls {MOBILE}")),
    "user": {**BASE, "user": f"user {MOBILE}"},
    "unknown field": {**BASE, "metadata": {"phone": MOBILE}},
    "image_url": with_messages(
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"https://x.example/?tel={MOBILE}"}}
            ],
        }
    ),
}


@pytest.mark.parametrize("place", sorted(PII_PLACES))
def test_personal_data_anywhere_in_the_request_is_masked(
    checked: Process, fake_upstream: Process, place: str
) -> None:
    body = {**PII_PLACES[place], "model": "private"}
    assert post(checked, body).status_code == 200, place
    sent = json.dumps(last_upstream_request(fake_upstream))
    assert MOBILE not in sent and "[[PII_MOBILE_1]]" in sent


@pytest.mark.parametrize("stream", [False, True])
def test_a_masked_tool_name_comes_back_restored(
    checked: Process, fake_upstream: Process, stream: bool
) -> None:
    body = {**with_tool(_set(["function", "name"], f"call_{MOBILE}")), "model": "private-tools"}
    body["messages"] = [{"role": "user", "content": f"ring {MOBILE}"}]
    if stream:
        names: list[str] = []
        with httpx.stream(
            "POST", f"{checked.url}/v1/chat/completions", json={**body, "stream": True}
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        for call in choice["delta"].get("tool_calls") or ():
                            names.append((call.get("function") or {}).get("name") or "")
        name = "".join(names)
    else:
        name = post(checked, body).json()["choices"][0]["message"]["tool_calls"][0]["function"]
        name = name["name"]
    assert name == f"call_{MOBILE}"
    assert MOBILE not in json.dumps(last_upstream_request(fake_upstream))


def test_the_request_body_is_copied_not_changed(tmp_path: Path) -> None:
    """The guard replaces containers; a copy taken earlier (the audit's) keeps what was sent."""
    from nobusy.guard import Guard, LexiconSettings
    from nobusy.guard.filtering import check_request

    (tmp_path / "mask.txt").write_text("secretname\n")
    guard = Guard([LexiconSettings(path=tmp_path / "mask.txt", action="mask")])
    body = with_messages({"role": "user", "content": "secretname"})
    kept = dict(body)
    check_request(guard, body, [])
    assert body["messages"][0]["content"] == "＊" * 10
    assert kept["messages"][0]["content"] == "secretname"
