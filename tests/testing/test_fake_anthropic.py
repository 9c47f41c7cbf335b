"""The fake upstream's Messages API side, with the official `anthropic` SDK and raw SSE."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from nobusy.testing.fake_upstream import FakeOptions, answer_text, reasoning_text
from tests.testing.test_fake_upstream import serve

QUESTION: list[Any] = [{"role": "user", "content": "What is nobusy?"}]
TOOLS: list[Any] = [{"name": "search", "input_schema": {"type": "object"}}]


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with serve(FakeOptions()) as url:
        yield url


@pytest.fixture(scope="module")
def sdk(fake_url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake_url, api_key="unused", max_retries=0) as client:
        yield client


def events(fake_url: str, model: str, **extra: Any) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of a streamed answer, in order."""
    body = {"model": model, "max_tokens": 64, "stream": True, "messages": QUESTION, **extra}
    with httpx.stream("POST", fake_url + "/v1/messages", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = list(response.iter_lines())
    names = [line[7:] for line in lines if line.startswith("event: ")]
    data = [orjson.loads(line[6:]) for line in lines if line.startswith("data: ")]
    return list(zip(names, data, strict=True))


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_the_answer_is_the_chat_sides(sdk: anthropic.Anthropic, stream: bool) -> None:
    if stream:
        with sdk.messages.stream(model="ok", max_tokens=64, messages=QUESTION) as answer:
            message = answer.get_final_message()
    else:
        message = sdk.messages.create(model="ok", max_tokens=64, messages=QUESTION)
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == answer_text(QUESTION)  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 3 and message.usage.output_tokens == 12


def test_the_event_sequence_is_anthropics(fake_url: str) -> None:
    names = [name for name, _ in events(fake_url, "ok")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[3:-3] == ["content_block_delta"] * 12
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_reasoning_is_a_thinking_block(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model="reasoning", max_tokens=64, messages=QUESTION) as answer:
        message = answer.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == reasoning_text(QUESTION)  # type: ignore[union-attr]
    assert message.content[1].text == answer_text(QUESTION)  # type: ignore[union-attr]


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_tool_call_is_tool_use(sdk: anthropic.Anthropic, stream: bool) -> None:
    kwargs: dict[str, Any] = {"model": "tool-call", "max_tokens": 64, "messages": QUESTION}
    if stream:
        with sdk.messages.stream(tools=TOOLS, **kwargs) as answer:
            message = answer.get_final_message()
    else:
        message = sdk.messages.create(tools=TOOLS, **kwargs)
    (call,) = message.content
    assert call.type == "tool_use" and call.name == "search"
    assert call.input == {"query": "What is nobusy?"}
    assert message.stop_reason == "tool_use"


def test_error_in_stream_is_an_overloaded_error_event(fake_url: str) -> None:
    got = events(fake_url, "error-in-stream")
    assert [name for name, _ in got][-3:] == ["content_block_delta"] * 2 + ["error"]
    assert got[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


def test_keepalive_sends_only_pings(fake_url: str) -> None:
    body = {"model": "keepalive", "max_tokens": 64, "stream": True, "messages": QUESTION}
    seen: list[str] = []
    with httpx.stream("POST", fake_url + "/v1/messages", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                seen.append(line[7:])
            if seen.count("ping") == 3:
                break
    assert seen == ["message_start", "ping", "ping", "ping"]


@pytest.mark.parametrize(
    ("model", "status", "kind", "retry_after"),
    [
        ("http:status=529", 529, "overloaded_error", "30"),
        ("http429:retry_after=7", 429, "rate_limit_error", "7"),
        ("http503", 503, "overloaded_error", "30"),
        ("http:status=401", 401, "authentication_error", None),
        ("http:status=400", 400, "invalid_request_error", None),
        ("nonsense:x=1", 400, "invalid_request_error", None),
    ],
)
def test_errors_have_anthropics_shape(
    fake_url: str, model: str, status: int, kind: str, retry_after: str | None
) -> None:
    body = {"model": model, "max_tokens": 64, "messages": QUESTION}
    headers = {"x-fake-mode": model} if model.startswith("nonsense") else {}
    response = httpx.post(fake_url + "/v1/messages", json=body, headers=headers)
    assert response.status_code == status
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == kind
    assert response.headers.get("retry-after") == retry_after


def test_bad_json_and_capacity() -> None:
    with serve(FakeOptions(capacity=0)) as url:
        full = httpx.post(url + "/v1/messages", json={"model": "ok", "messages": QUESTION})
        bad = httpx.post(url + "/v1/messages", content=b"[1]")
    assert full.status_code == 503 and full.json()["error"]["type"] == "overloaded_error"
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("continuation", ["all", "none"])
def test_a_prefill_continues_unless_ignored(sdk: anthropic.Anthropic, continuation: str) -> None:
    full = answer_text(QUESTION)
    partial = full[: full.index("alpha")].rstrip()
    messages = [*QUESTION, {"role": "assistant", "content": partial}]
    message = sdk.messages.create(
        model=f"ok:continuation={continuation}", max_tokens=64, messages=messages
    )
    text = message.content[0].text  # type: ignore[union-attr]
    assert text == (full[len(partial) :] if continuation == "all" else full)


def test_a_tool_result_turn_answers_the_question_before_it(sdk: anthropic.Anthropic) -> None:
    messages: list[Any] = [
        *QUESTION,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "search", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]},
    ]
    message = sdk.messages.create(model="ok", max_tokens=64, messages=messages)
    assert message.content[0].text == answer_text(QUESTION)  # type: ignore[union-attr]
