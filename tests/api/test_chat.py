"""POST /v1/chat/completions through the official openai SDK, sync and async, stream and not."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from nobusy.testing.fake_upstream import answer_text, reasoning_text
from tests.conftest import openai_client

MESSAGES: list[Any] = [{"role": "user", "content": "What is nobusy?"}]


def client(base_url: str) -> openai.OpenAI:
    return openai_client(base_url)


def test_non_streaming_text_matches_upstream(base_url: str) -> None:
    raw = client(base_url).chat.completions.with_raw_response.create(model="ok", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == answer_text(MESSAGES)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "ok"
    assert raw.headers["x-nobusy-upstream"] == "fake/ok"
    assert len(raw.headers["x-request-id"]) == 24
    assert completion.id == f"chatcmpl-{raw.headers['x-request-id']}"


def test_streaming_text_matches_upstream(base_url: str) -> None:
    stream = client(base_url).chat.completions.create(model="ok", messages=MESSAGES, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer_text(MESSAGES)
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # not asked for


async def test_async_stream_and_non_stream(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as aclient:
        completion = await aclient.chat.completions.create(model="ok", messages=MESSAGES)
        assert completion.choices[0].message.content == answer_text(MESSAGES)
        stream = await aclient.chat.completions.create(model="ok", messages=MESSAGES, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts) == answer_text(MESSAGES)


def test_usage_streaming_when_asked(base_url: str) -> None:
    stream = client(base_url).chat.completions.create(
        model="ok", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.completion_tokens == 12
    assert usage.prompt_tokens == 3
    assert usage.total_tokens == 15


def test_usage_non_streaming(base_url: str) -> None:
    completion = client(base_url).chat.completions.create(model="ok", messages=MESSAGES)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 12)


def test_reasoning_passes_through_streaming(base_url: str) -> None:
    stream = client(base_url).chat.completions.create(
        model="reasoning", messages=MESSAGES, stream=True
    )
    reasoning, content = [], []
    for chunk in stream:
        if chunk.choices:
            delta: Any = chunk.choices[0].delta
            reasoning.append(getattr(delta, "reasoning_content", None) or "")
            content.append(delta.content or "")
    assert "".join(reasoning) == reasoning_text(MESSAGES)
    assert "".join(content) == answer_text(MESSAGES)


def test_reasoning_passes_through_non_streaming(base_url: str) -> None:
    completion = client(base_url).chat.completions.create(model="reasoning", messages=MESSAGES)
    message: Any = completion.choices[0].message
    assert message.reasoning_content == reasoning_text(MESSAGES)
    assert message.content == answer_text(MESSAGES)


def test_reasoning_content_accepted_in_input_messages(base_url: str) -> None:
    history: list[Any] = [
        *MESSAGES,
        {"role": "assistant", "content": "Earlier answer.", "reasoning_content": "Earlier."},
        {"role": "user", "content": "And then?"},
    ]
    completion = client(base_url).chat.completions.create(model="ok", messages=history)
    assert completion.choices[0].message.content == answer_text(history)


TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


def test_tool_call_streaming_assembles_valid_json(base_url: str) -> None:
    stream = client(base_url).chat.completions.create(
        model="tools", messages=MESSAGES, tools=TOOLS, tool_choice="auto", stream=True
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        for call in chunk.choices[0].delta.tool_calls or ():
            if call.function and call.function.name:
                name += call.function.name
            if call.function and call.function.arguments:
                arguments += call.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert name == "search"
    assert json.loads(arguments) == {"query": "What is nobusy?"}
    assert finish == "tool_calls"


def test_tool_call_non_streaming(base_url: str) -> None:
    completion = client(base_url).chat.completions.create(
        model="tools", messages=MESSAGES, tools=TOOLS
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls: Any = choice.message.tool_calls
    assert calls[0].function.name == "search"
    assert json.loads(calls[0].function.arguments) == {"query": "What is nobusy?"}


def test_content_part_array_and_parameters(base_url: str) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is nobusy?"}]},
    ]
    completion = client(base_url).chat.completions.create(
        model="ok",
        messages=messages,
        max_tokens=50,
        max_completion_tokens=50,
        temperature=0.5,
        top_p=0.9,
        stop=["\n\n"],
        seed=7,
        user="tester",
        response_format={"type": "text"},
        extra_body={"an_unknown_field": {"is": "passed through"}},
    )
    assert completion.choices[0].message.content == answer_text(messages)


def test_unknown_model_is_404_listing_aliases(base_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(base_url).chat.completions.create(model="gpt-9", messages=MESSAGES)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "Available models: ok, reasoning" in error["message"]


def test_models_lists_aliases(base_url: str) -> None:
    ids = [m.id for m in client(base_url).models.list()]
    assert ids[:3] == ["ok", "reasoning", "tools"]
    assert "local" in ids
