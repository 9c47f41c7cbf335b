"""The guard on the request's path: input checked before routing, output filtered as it streams.

The output filter wraps the answer's chunks (between routing and relay), so streaming and
non-streaming answers, every upstream and every continuation pass through the same code:
``stream: true`` cannot bypass it. Content and reasoning each get their own stream filter,
which holds back only the few characters a split word could still need; a block word ends
the answer with ``finish_reason: "content_filter"`` and closes the upstream request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from nobusy.errors import ContentFiltered
from nobusy.guard import Guard, Hit, StreamFilter
from nobusy.pii import Masker, Restorer
from nobusy.upstreams.base import Chunk

__all__ = ["check_messages", "filter_answer", "restore_answer"]


def check_messages(guard: Guard, body: dict[str, Any], hits: list[Hit]) -> None:
    """Block or mask the request's messages in place (``body`` is nobusy's own copy)."""
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = _check(guard, content, hits)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"] = _check(guard, part["text"], hits)


def _check(guard: Guard, text: str, hits: list[Hit]) -> str:
    verdict = guard.check_input(text)
    hits.extend(verdict.hits)
    if verdict.blocked:
        raise ContentFiltered(
            "The request contains content that this service does not accept "
            "(sensitive-word filter)."
        )
    return verdict.text


async def filter_answer(
    chunks: AsyncIterator[Chunk], guard: Guard, hits: list[Hit]
) -> AsyncIterator[Chunk]:
    """The answer with sensitive words masked or, for a block word, the answer cut short."""
    filters = {"content": guard.output_filter(), "reasoning_content": guard.output_filter()}
    try:
        async for chunk in chunks:
            choices = chunk.get("choices")
            if not choices:
                yield chunk
                continue
            choice = choices[0]
            delta = choice.get("delta") or {}
            finish = choice.get("finish_reason")
            blocked = False
            for field, stream in filters.items():
                piece = delta.get(field)
                if piece:
                    step = stream.feed(piece)
                    hits.extend(step.hits)
                    delta[field] = step.text
                    blocked = blocked or step.blocked
            if finish and not blocked:
                # Release what was held back, then end: the text, the tail, the finish.
                yield {**chunk, "choices": [{**choice, "finish_reason": None}]}
                for field, stream in filters.items():
                    tail = _finish(stream, hits)
                    if tail.text:
                        yield _piece(chunk, field, tail.text)
                    blocked = blocked or tail.blocked
                if not blocked:
                    yield {
                        **chunk,
                        "choices": [
                            {"index": choice.get("index", 0), "delta": {}, "finish_reason": finish}
                        ],
                    }
                    continue
                delta = {}
            if blocked:
                out = {k: v for k, v in delta.items() if v}
                yield {**chunk, "choices": [{**choice, "delta": out, "finish_reason": None}]}
                yield {
                    **chunk,
                    "choices": [
                        {
                            "index": choice.get("index", 0),
                            "delta": {},
                            "finish_reason": "content_filter",
                        }
                    ],
                }
                return
            yield chunk
        for field, stream in filters.items():  # an answer that ended without a finish chunk
            tail = _finish(stream, hits)
            if tail.text:
                yield _piece({}, field, tail.text)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _finish(stream: StreamFilter, hits: list[Hit]) -> Any:
    step = stream.finish()
    hits.extend(step.hits)
    return step


def _piece(template: Chunk, field: str, text: str) -> Chunk:
    return {
        **{k: v for k, v in template.items() if k not in ("choices", "usage")},
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {field: text}, "finish_reason": None}],
    }


async def restore_answer(chunks: AsyncIterator[Chunk], masker: Masker) -> AsyncIterator[Chunk]:
    """Put personal data masked out of the request back into the answer, as it streams.

    A placeholder split across chunks is held back until it is complete; each field (and each
    tool call's arguments) has its own restorer.
    """
    restorers: dict[tuple[str, int], Restorer] = {}

    def restore(field: str, index: int, text: str, final: bool) -> str:
        restorer = restorers.setdefault((field, index), masker.restorer())
        out = restorer.feed(text)
        return out + restorer.finish() if final else out

    try:
        async for chunk in chunks:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                final = bool(choice.get("finish_reason"))
                for field in ("content", "reasoning_content"):
                    if delta.get(field) or (final and (field, 0) in restorers):
                        delta[field] = restore(field, 0, delta.get(field) or "", final)
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") or {}
                    if function.get("arguments"):
                        index = int(call.get("index") or 0)
                        function["arguments"] = restore(
                            "arguments", index, function["arguments"], final
                        )
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
