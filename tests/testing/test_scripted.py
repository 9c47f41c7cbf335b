"""The scripted upstream itself: it speaks the protocol and fails as the openai kind does."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

import nobusy.testing
from nobusy.errors import UpstreamError, UpstreamProtocolError
from nobusy.routing.continuation import continuation_body
from nobusy.testing import (
    DEFAULT_ANSWER,
    CutAfter,
    ErrorEvent,
    Refuse,
    Reply,
    ScriptedUpstream,
    ScriptExhausted,
    ToolCall,
    pieces,
)
from nobusy.upstreams import openai
from nobusy.upstreams.base import Chunk, Upstream, UpstreamCall, status_error

BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "say it"}]}


async def play(up: ScriptedUpstream, body: dict[str, Any] | None = None) -> list[Chunk]:
    return [c async for c in up.stream(UpstreamCall("m", body or BODY))]


def text(chunks: list[Chunk]) -> str:
    return "".join(
        (choice.get("delta") or {}).get("content") or ""
        for c in chunks
        for choice in c.get("choices") or ()
    )


def test_it_satisfies_the_upstream_protocol() -> None:
    up: Upstream = ScriptedUpstream("a")  # mypy checks it statically, in scripted.py
    assert up.kind == "scripted" and up.name == "a" and up.default_model


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422, 429, 500, 502, 503, 529])
@pytest.mark.parametrize("retry_after", [None, 7.0])
def test_refusals_match_the_openai_kind(status: int, retry_after: float | None) -> None:
    real = openai.Upstream("u", openai.Settings(base_url="http://127.0.0.1:9/v1"))
    headers = {"retry-after": "7"} if retry_after is not None else {}
    expected = real._error_from_body({"error": {"message": "nope"}}, status, headers)
    got = status_error(status, "nope", "u", retry_after)  # what ScriptedUpstream raises
    assert type(got) is type(expected)
    assert (got.message, got.upstream, got.upstream_status, got.retry_after) == (
        expected.message,
        expected.upstream,
        expected.upstream_status,
        expected.retry_after,
    )


async def test_reply_streams_openai_chunks_then_usage() -> None:
    chunks = await play(ScriptedUpstream("a", [Reply("hello big world")]))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text(chunks) == "hello big world"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1


async def test_faults_send_the_first_pieces_then_raise() -> None:
    up = ScriptedUpstream("a", [CutAfter(2), ErrorEvent(after=1, message="hot")])
    got: list[Chunk] = []
    with pytest.raises(UpstreamProtocolError, match="connection broken"):
        async for chunk in up.stream(UpstreamCall(None, BODY)):
            got.append(chunk)
    assert text(got) == "alpha bravo "
    with pytest.raises(UpstreamProtocolError, match="error in stream: hot"):
        await play(up)
    assert [c.ended for c in up.calls] == ["failed", "failed"]


async def test_refuse_raises_before_any_chunk() -> None:
    up = ScriptedUpstream("a", [Refuse(429, retry_after=3)])
    with pytest.raises(UpstreamError) as info:
        await play(up)
    assert info.value.retry_after == 3 and up.calls[0].chunks == []


@pytest.mark.parametrize("mode", ["prefix", "vllm", "none"])
async def test_a_continuation_request_gets_only_the_rest(mode: str) -> None:
    body = continuation_body(BODY, "alpha bravo charlie", mode, 3)
    chunks = await play(ScriptedUpstream("a"), body)
    assert "alpha bravo charlie" + text(chunks) == DEFAULT_ANSWER


async def test_tool_call_arguments_come_in_parts() -> None:
    chunks = await play(ScriptedUpstream("a", [ToolCall("f", '{"a": 1}', parts=2)]))
    calls = [
        d
        for c in chunks
        for choice in c.get("choices") or ()
        for d in (choice.get("delta") or {}).get("tool_calls") or ()
    ]
    assert calls[0]["function"] == {"name": "f"} and calls[0]["id"] == "call_scripted_1"
    assert "".join(c["function"].get("arguments", "") for c in calls) == '{"a": 1}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_callable_script_decides_from_the_call() -> None:
    up = ScriptedUpstream("a", lambda call: Reply(call.model or "none"))
    assert text(await play(up)) == "m"
    assert up.bodies == [BODY]


async def test_an_exhausted_script_says_so() -> None:
    up = ScriptedUpstream("a", [Reply()])
    await play(up)
    with pytest.raises(ScriptExhausted, match="call 2"):
        await play(up)


async def test_closing_early_is_recorded() -> None:
    up = ScriptedUpstream("a")
    stream = up.stream(UpstreamCall(None, BODY))
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert up.calls[0].ended == "closed"


def test_pieces_keep_every_character() -> None:
    for sample in ("", " lead", "a  b\nc ", "one"):
        assert "".join(pieces(sample)) == sample


async def test_the_package_docstring_example_runs() -> None:
    doc = nobusy.testing.__doc__ or ""
    lines = doc.split("::\n\n", 1)[1].splitlines()
    end = next(i for i, line in enumerate(lines) if line and not line.startswith(" "))
    block = "\n".join(lines[:end])
    assert "assert text == c.answer" in block  # the whole example, up to its last line
    source = "async def example():\n" + textwrap.indent(textwrap.dedent(block), "    ")
    namespace: dict[str, Any] = {}
    exec(compile(source, "nobusy.testing docstring", "exec"), namespace)
    await namespace["example"]()
