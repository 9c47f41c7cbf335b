"""The output filter on an answer's chunks, in-process: content, reasoning and tool calls alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nobusy.guard import Guard, Hit, LexiconSettings
from nobusy.guard.filtering import filter_answer
from nobusy.message import MessageBuilder

Chunk = dict[str, Any]


@pytest.fixture()
def guard(tmp_path: Path) -> Guard:
    (tmp_path / "mask.txt").write_text("lazy dog\n")
    (tmp_path / "block.txt").write_text("dangerword\n")
    return Guard(
        [
            LexiconSettings(path=tmp_path / "mask.txt", action="mask"),
            LexiconSettings(path=tmp_path / "block.txt", action="block"),
        ]
    )


def delta(finish: str | None = None, **fields: Any) -> Chunk:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


def call(index: int, arguments: str, **more: Any) -> dict[str, Any]:
    return {
        "index": index,
        "function": {"arguments": arguments, **more.pop("function", {})},
        **more,
    }


async def run(guard: Guard, chunks: list[Chunk]) -> tuple[dict[str, Any], str | None, list[Hit]]:
    async def source() -> AsyncIterator[Chunk]:
        for chunk in chunks:
            yield chunk

    hits: list[Hit] = []
    built = MessageBuilder()
    async for chunk in filter_answer(source(), guard, hits):
        for choice in chunk["choices"]:
            built.add(choice)
    return built.message(), built.finish_reason, hits


async def test_tool_call_arguments_split_across_deltas_are_masked(guard: Guard) -> None:
    first = call(0, '{"query": "the la', id="c1", type="function", function={"name": "search"})
    message, finish, hits = await run(
        guard,
        [
            delta(role="assistant", content=None),
            delta(tool_calls=[first]),
            delta(tool_calls=[call(1, '{"q": "a lazy', id="c2", function={"name": "f"})]),
            delta(tool_calls=[call(0, 'zy dog"}')]),
            delta(tool_calls=[call(1, ' dog"}')]),
            delta("tool_calls"),
        ],
    )
    assert finish == "tool_calls"
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == [
        '{"query": "the ＊＊＊＊＊＊＊＊"}',
        '{"q": "a ＊＊＊＊＊＊＊＊"}',
    ]
    assert message["tool_calls"][0]["id"] == "c1"
    assert message["tool_calls"][0]["function"]["name"] == "search"
    assert [hit.word for hit in hits] == ["lazy dog", "lazy dog"]


async def test_a_block_word_in_a_tool_call_drops_the_calls(guard: Guard) -> None:
    message, finish, _ = await run(
        guard,
        [
            delta(content="Calling."),
            delta(tool_calls=[call(0, '{"q": "danger', id="c1", function={"name": "f"})]),
            delta(tool_calls=[call(0, 'word"}')]),
            delta("tool_calls"),
        ],
    )
    assert finish == "content_filter"
    assert "tool_calls" not in message and message["content"] == "Calling."


async def test_reasoning_is_masked_and_bidi_controls_stripped(guard: Guard) -> None:
    message, finish, _ = await run(
        guard,
        [
            delta(reasoning_content="think of a la"),
            delta(reasoning_content="zy dog"),
            delta(content="shown as \u202egod yzal\u202c"),
            delta("stop"),
        ],
    )
    assert finish == "stop"
    assert message["reasoning_content"] == "think of a ＊＊＊＊＊＊＊＊"
    assert message["content"] == "shown as god yzal"


async def test_tool_calls_without_a_finish_chunk_are_still_sent(guard: Guard) -> None:
    message, _, _ = await run(
        guard, [delta(tool_calls=[call(0, '{"q": "lazy dog"}', id="c", function={"name": "f"})])]
    )
    assert message["tool_calls"][0]["function"]["arguments"] == '{"q": "＊＊＊＊＊＊＊＊"}'
