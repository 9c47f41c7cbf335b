"""The anthropic kind: the Messages body it sends, and the events it reads, over a raw socket.

The shipped fake covers whole faults (tests/api, with `kind: anthropic` upstreams); these
cases need bytes the fake never sends (unknown events, nonsense, missing usage, a whole
message to a streaming request), so a tiny raw server sends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from nobusy.errors import UpstreamOverloaded, UpstreamProtocolError, UpstreamRejectedRequest
from nobusy.upstreams.anthropic import DEFAULT_MAX_TOKENS, Settings, Upstream
from nobusy.upstreams.anthropic_wire import messages_body
from nobusy.upstreams.base import UpstreamCall
from tests.upstreams.test_openai_sse import sse_response


def event(name: str, **data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


START = event("message_start", message={"id": "m", "content": [], "usage": {"input_tokens": 5}})
TEXT = event("content_block_start", index=0, content_block={"type": "text", "text": ""})
HI = event("content_block_delta", index=0, delta={"type": "text_delta", "text": "hi"})
END = (
    event("content_block_stop", index=0)
    + event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 2})
    + event("message_stop")
)


async def collect(payload: bytes, requests: list[bytes] | None = None) -> list[dict[str, Any]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        if requests is not None:
            requests.append(head + await reader.readexactly(length))
        writer.write(payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(base_url=f"http://127.0.0.1:{port}", api_key="sk-ant-1")  # type: ignore[arg-type]
    upstream = Upstream("raw", settings)
    try:
        body = {"messages": [{"role": "user", "content": "hello"}]}
        stream: AsyncIterator[dict[str, Any]] = upstream.stream(UpstreamCall(model="m", body=body))
        return [chunk async for chunk in stream]
    finally:
        await upstream.aclose()
        server.close()


def contents(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


async def test_pings_and_unknown_events_are_skipped_and_usage_read() -> None:
    body = START + event("ping") + TEXT + event("ping") + HI + event("brand_new", x=1) + END
    requests: list[bytes] = []
    chunks = await collect(sse_response(body), requests)
    assert contents(chunks) == "hi"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    head, _, sent = requests[0].partition(b"\r\n\r\n")
    assert b"x-api-key: sk-ant-1" in head and b"anthropic-version: 2023-06-01" in head
    assert b"authorization" not in head.lower()
    assert orjson.loads(sent) == {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "stream": True,
        "max_tokens": DEFAULT_MAX_TOKENS,
    }


async def test_missing_usage_is_no_usage_chunk() -> None:
    end = event("content_block_stop", index=0)
    end += event("message_delta", delta={"stop_reason": "max_tokens"}) + event("message_stop")
    start = event("message_start", message={"id": "m", "content": []})
    chunks = await collect(sse_response(start + TEXT + HI + end))
    assert not any("usage" in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (START + TEXT + b"event: content_block_delta\ndata: {oops\n\n", "malformed JSON"),
        (START + b"data: [1, 2]\n\n", "non-object event"),
        (START + HI, "a delta for a content block that was not started"),
        (b'event: message_start\ndata: {"type": "message_start"}\n\n', "without a message"),
        (START + TEXT + HI, "ended before message_stop"),
    ],
)
async def test_nonsense_is_a_protocol_error(body: bytes, says: str) -> None:
    with pytest.raises(UpstreamProtocolError, match=says):
        await collect(sse_response(body))


async def test_an_overloaded_error_event_in_a_200_stream_is_busy() -> None:
    error = {"type": "overloaded_error", "message": "Overloaded"}
    with pytest.raises(UpstreamOverloaded, match="overloaded_error in stream") as caught:
        await collect(sse_response(START + TEXT + HI + event("error", error=error)))
    assert caught.value.retryable
    other = {"type": "api_error", "message": "boom"}
    with pytest.raises(UpstreamProtocolError, match="error in stream: boom"):
        await collect(sse_response(START + event("error", error=other)))


async def test_529_with_retry_after_is_busy_for_that_long() -> None:
    body = orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "O"}})
    response = (
        b"HTTP/1.1 529 Overloaded\r\ncontent-type: application/json\r\nretry-after: 12\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with pytest.raises(UpstreamOverloaded) as caught:
        await collect(response)
    assert caught.value.retry_after == 12 and caught.value.upstream_status == 529


async def test_a_whole_message_to_a_streaming_request_is_still_an_answer() -> None:
    message = {
        "type": "message",
        "content": [
            {"type": "text", "text": "hi"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    body = orjson.dumps(message)
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    chunks = await collect(response)
    assert contents(chunks) == "hi"
    call = chunks[2]["choices"][0]["delta"]["tool_calls"][0]
    assert call["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["total_tokens"] == 7


async def test_a_tool_call_without_input_deltas_gets_empty_json_arguments() -> None:
    tool = {"type": "tool_use", "id": "t", "name": "now", "input": {}}
    body = START + event("content_block_start", index=0, content_block=tool)
    body += event("content_block_stop", index=0)
    body += event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 1})
    chunks = await collect(sse_response(body + event("message_stop")))
    arguments = "".join(
        call["function"].get("arguments") or ""
        for c in chunks
        if c.get("choices")
        for call in c["choices"][0]["delta"].get("tool_calls") or ()
    )
    assert arguments == "{}"


def test_the_chat_request_as_a_messages_body() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "hmm",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"q":1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "user", "content": "And?"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stop": "END",
        "max_tokens": 100,
        "temperature": 1.7,
        "user": "u1",
    }
    body = messages_body(chat, "m", 8192, "up")
    assert body["system"] == "Be brief."
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "AAAA",
    }
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"q": 1}}
    ]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "42"},
        {"type": "text", "text": "And?"},
    ]
    assert body["tools"] == [{"name": "f", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["stop_sequences"] == ["END"] and body["max_tokens"] == 100
    assert body["temperature"] == 1.0 and body["metadata"] == {"user_id": "u1"}


def test_thinking_from_reasoning_effort_but_not_on_a_prefill() -> None:
    ask = {"messages": [{"role": "user", "content": "q"}], "reasoning_effort": "low"}
    body = messages_body({**ask, "temperature": 0.2}, "m", 8192, "up")
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "temperature" not in body  # Anthropic refuses sampling changes with thinking
    prefill = [*ask["messages"], {"role": "assistant", "content": "The answer is "}]  # type: ignore[list-item]
    body = messages_body({**ask, "messages": prefill}, "m", 8192, "up")
    assert "thinking" not in body
    assert body["messages"][-1]["content"] == [{"type": "text", "text": "The answer is"}]


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ([], "at least one user message"),
        ([{"role": "critic", "content": "x"}], "no Messages API equivalent"),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}],
            "not valid JSON",
        ),
        ([{"role": "user", "content": [{"type": "input_audio"}]}], "'input_audio'"),
    ],
)
def test_what_the_messages_api_cannot_say_is_a_rejected_request(
    messages: list[Any], says: str
) -> None:
    with pytest.raises(UpstreamRejectedRequest, match=says) as caught:
        messages_body({"messages": messages}, "m", 8192, "up")
    assert not caught.value.retryable


async def test_a_stop_sequence_is_named_as_vllm_names_it() -> None:
    delta = {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    end = event("content_block_stop", index=0)
    end += event("message_delta", delta=delta, usage={"output_tokens": 1})
    chunks = await collect(sse_response(START + TEXT + HI + end + event("message_stop")))
    finish = chunks[-2]["choices"][0]
    assert finish["finish_reason"] == "stop" and finish["stop_reason"] == "END"
