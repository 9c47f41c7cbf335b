"""The guard on the request's path: input checked before routing, output filtered as it streams.

The output filter wraps the answer's chunks (between routing and relay), so streaming and
non-streaming answers, every upstream and every continuation pass through the same code:
``stream: true`` cannot bypass it. Content and reasoning each get their own stream filter,
which holds back only the few characters a split word could still need; tool calls are checked
whole once complete. A block word ends the answer with ``finish_reason: "content_filter"`` and
closes the upstream request.

The input check reads every string that goes upstream (``nobusy.guard.payload``), not only the
messages' text. Bidi embedding and override controls are taken out of checked text on both
sides: ``"\u202ekcalb"`` would show as a word the matcher never read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from nobusy.errors import ContentFiltered
from nobusy.guard import Guard, Hit, StreamFilter, payload
from nobusy.guard.normalize import strip_bidi
from nobusy.guard.pii import Masker, Restorer
from nobusy.message import merge_tool_call
from nobusy.upstreams.base import Chunk

__all__ = ["check_request", "filter_answer", "restore_answer"]


def check_request(guard: Guard, body: dict[str, Any], hits: list[Hit]) -> None:
    """Block or mask, in place, every string of the request that goes upstream (``body`` is
    nobusy's own copy; its containers are replaced, not changed, so earlier copies keep the
    request as the client sent it).

    The conversation's text is checked joined, in the order the model reads it, so a word split
    across content parts or messages is found; masks go back where each piece of it lives.
    Every other string (names, tool calls, tool schemas, ``user``, ``stop``, unknown fields...)
    is checked on its own.
    """
    fresh = payload.copy(body)
    pieces = list(payload.conversation(fresh))
    texts = [container[key] for container, key in pieces]
    joined = _check(guard, "".join(texts), hits)
    at = 0
    for (container, key), text in zip(pieces, texts, strict=True):
        # Masking keeps every character's position (one ＊ per code point), so the pieces
        # of the masked text are where they were.
        container[key] = strip_bidi(joined[at : at + len(text)])
        at += len(text)
    done = frozenset((id(container), key) for container, key in pieces)
    payload.rewrite(fresh, lambda text: strip_bidi(_check(guard, text, hits)), skip=done)
    body.clear()
    body.update(fresh)


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
    """The answer with sensitive words masked or, for a block word, the answer cut short.

    Content and reasoning stream through their own filters. Tool calls are held until the
    answer ends (``routing.answer`` holds them anyway: a half-made call cannot be resumed),
    then each call's name and arguments are checked whole and sent as one delta per call; a
    block word in a call drops every call, for a cut-off JSON argument helps no one.
    """
    filters = {"content": guard.output_filter(), "reasoning_content": guard.output_filter()}
    calls: dict[int, dict[str, Any]] = {}
    try:
        async for chunk in chunks:
            choices = chunk.get("choices")
            if not choices:
                yield chunk
                continue
            choice = choices[0]
            delta = choice.get("delta") or {}
            finish = choice.get("finish_reason")
            held = delta.pop("tool_calls", None)
            for call in held or ():
                merge_tool_call(calls, call)
            blocked = False
            for field, stream in filters.items():
                piece = delta.get(field)
                if piece:
                    step = stream.feed(piece)
                    hits.extend(step.hits)
                    delta[field] = strip_bidi(step.text)
                    blocked = blocked or step.blocked
            if finish and not blocked:
                # Release what was held back, then end: the text, the tail, the calls, the finish.
                yield {**chunk, "choices": [{**choice, "finish_reason": None}]}
                for field, stream in filters.items():
                    tail = _finish(stream, hits)
                    if tail.text:
                        yield _piece(chunk, field, strip_bidi(tail.text))
                    blocked = blocked or tail.blocked
                if not blocked:
                    checked = _check_calls(guard, calls, hits)
                    blocked = checked is None
                    if checked:
                        yield _piece(chunk, "tool_calls", checked)
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
            if delta or not held:  # a chunk that carried only tool calls waits with them
                yield chunk
        for field, stream in filters.items():  # an answer that ended without a finish chunk
            tail = _finish(stream, hits)
            if tail.text:
                yield _piece({}, field, strip_bidi(tail.text))
            if tail.blocked:
                return
        checked = _check_calls(guard, calls, hits)
        if checked:
            yield _piece({}, "tool_calls", checked)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _check_calls(
    guard: Guard, calls: dict[int, dict[str, Any]], hits: list[Hit]
) -> list[dict[str, Any]] | None:
    """The complete tool calls as deltas, names and arguments masked; None if one is blocked."""
    out: list[dict[str, Any]] = []
    for index in sorted(calls):
        call = calls[index]
        function = call["function"]
        for key in ("name", "arguments"):
            verdict = guard.check_output(function[key])
            hits.extend(verdict.hits)
            if verdict.blocked:
                return None
            function[key] = strip_bidi(verdict.text)
        out.append({"index": index, **call})
    calls.clear()
    return out


def _finish(stream: StreamFilter, hits: list[Hit]) -> Any:
    step = stream.finish()
    hits.extend(step.hits)
    return step


def _piece(template: Chunk, field: str, value: Any) -> Chunk:
    return {
        **{k: v for k, v in template.items() if k not in ("choices", "usage")},
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {field: value}, "finish_reason": None}],
    }


async def restore_answer(chunks: AsyncIterator[Chunk], masker: Masker) -> AsyncIterator[Chunk]:
    """Put personal data masked out of the request back into the answer, as it streams.

    A placeholder split across chunks is held back until it is complete; each field (and each
    tool call's name and arguments) has its own restorer, flushed when the answer finishes.
    """
    restorers: dict[tuple[str, int], Restorer] = {}

    def restore(field: str, index: int, text: str) -> str:
        return restorers.setdefault((field, index), masker.restorer()).feed(text)

    try:
        async for chunk in chunks:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                for field in ("content", "reasoning_content"):
                    if delta.get(field):
                        delta[field] = restore(field, 0, delta[field])
                for call in delta.get("tool_calls") or ():
                    index = int(call.get("index") or 0)
                    function = call.get("function") or {}
                    for field in ("name", "arguments"):
                        if function.get(field):
                            function[field] = restore(field, index, function[field])
                if choice.get("finish_reason"):
                    _flush(restorers, delta)
                    choice["delta"] = delta
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _flush(restorers: dict[tuple[str, int], Restorer], delta: dict[str, Any]) -> None:
    """Add what each restorer still holds to the answer's last delta."""
    calls: dict[int, dict[str, str]] = {}
    for (field, index), restorer in restorers.items():
        tail = restorer.finish()
        if not tail:
            continue
        if field in ("content", "reasoning_content"):
            delta[field] = (delta.get(field) or "") + tail
        else:
            calls.setdefault(index, {})[field] = tail
    if calls:
        extra = [{"index": i, "function": function} for i, function in sorted(calls.items())]
        delta["tool_calls"] = [*(delta.get("tool_calls") or ()), *extra]
