"""Anthropic's Messages API out: the internal chunks as Anthropic's events, or one message.

The stream follows Anthropic's sequence exactly
(https://docs.anthropic.com/en/docs/build-with-claude/streaming): ``message_start``, ``ping``,
then per content block ``content_block_start``, its deltas (``thinking_delta``,
``text_delta``, ``input_json_delta``) and ``content_block_stop``, then ``message_delta`` with
the ``stop_reason`` and usage, and ``message_stop``. ``reasoning_content`` becomes a thinking
block, content a text block, each tool call a ``tool_use`` block. The relay decides when each
of these is written (``nobusy.routing.relay``); nobusy's notes stay SSE comments, which the
SDKs skip, and an error after the headers is an ``error`` event in Anthropic's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from nobusy.protocols.errors import anthropic_error
from nobusy.schema import ChatRequest
from nobusy.store.usage import UsageRecord
from nobusy.upstreams.base import Chunk

__all__ = ["MessagesEvents", "render_message", "stop_reason"]

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(
    finish: str | None, matched: str | None, chat: ChatRequest
) -> tuple[str, str | None]:
    """(Anthropic's ``stop_reason``, ``stop_sequence``) for OpenAI's ``finish_reason``; a stop
    sequence is known when the upstream names the one it matched (vLLM's ``stop_reason``)."""
    stops = [chat.stop] if isinstance(chat.stop, str) else chat.stop or []
    if finish in (None, "stop") and matched is not None and matched in stops:
        return "stop_sequence", matched
    return _STOP_REASONS.get(finish or "stop", "end_turn"), None


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesEvents:
    """The ``Encoder`` of one streamed Messages answer: which block is open, how it ended."""

    __slots__ = ("blocks", "chat", "extension", "finish", "matched", "open", "record")

    def __init__(self, chat: ChatRequest, record: UsageRecord) -> None:
        self.chat = chat
        self.record = record
        self.blocks = 0  # content blocks started so far; the open one is blocks - 1
        self.open: str | None = None  # "thinking", "text" or "tool:<index>"
        self.finish: str | None = None
        self.matched: str | None = None
        # What nobusy adds at the end (``nobusy.citations``), asked for once the answer is
        # whole: a key of message_delta that Anthropic's SDKs keep as an extra and others skip.
        self.extension: Callable[[], dict[str, Any]] | None = None

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": f"msg_{self.record.request_id}",
            "type": "message",
            "role": "assistant",
            "model": self.chat.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Known only at the end (the upstream's usage chunk): message_delta says it then.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message}) + _event(
            "ping", {"type": "ping"}
        )

    def chunk(self, chunk: Chunk) -> bytes:
        out = bytearray()
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self._ensure(
                    "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                )
                out += self._delta(
                    {"type": "thinking_delta", "thinking": delta["reasoning_content"]}
                )
            if delta.get("content"):
                out += self._ensure("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": delta["content"]})
            for call in delta.get("tool_calls") or ():
                index = int(call.get("index") or 0)
                function = call.get("function") or {}
                block: dict[str, Any] = {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{self.record.request_id}_{index}",
                    "name": function.get("name") or "",
                    "input": {},
                }
                out += self._ensure(f"tool:{index}", block)
                if function.get("arguments"):
                    partial = {"type": "input_json_delta", "partial_json": function["arguments"]}
                    out += self._delta(partial)
            self.finish = choice.get("finish_reason") or self.finish
            if isinstance(choice.get("stop_reason"), str):
                self.matched = choice["stop_reason"]
        return bytes(out)

    def note(self, text: str) -> bytes:
        return b": " + text.encode() + b"\n\n"

    def end(self) -> bytes:
        out = bytearray(self._close())
        reason, sequence = stop_reason(self.finish, self.matched, self.chat)
        usage = {
            "input_tokens": self.record.prompt_tokens,
            "output_tokens": self.record.completion_tokens,
        }
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        final: dict[str, Any] = {"type": "message_delta", "delta": delta, "usage": usage}
        if self.extension is not None:
            final["nobusy"] = self.extension()
        out += _event("message_delta", final)
        out += _event("message_stop", {"type": "message_stop"})
        return bytes(out)

    def error(self, status: int, body: dict[str, Any]) -> bytes:
        # Anthropic's SDKs raise an `error` event as the status error of its type.
        return _event("error", anthropic_error(status, body)[1])

    def _ensure(self, kind: str, block: dict[str, Any]) -> bytes:
        if self.open == kind:
            return b""
        out = self._close()
        self.open = kind
        self.blocks += 1
        start = {"type": "content_block_start", "index": self.blocks - 1, "content_block": block}
        return out + _event("content_block_start", start)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        data = {"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}
        return _event("content_block_delta", data)

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _event(
            "content_block_stop", {"type": "content_block_stop", "index": self.blocks - 1}
        )


def render_message(completion: dict[str, Any], chat: ChatRequest) -> dict[str, Any]:
    """A whole answer (one ``chat.completion``) as Anthropic's ``message`` object."""
    choice = completion["choices"][0]
    message = choice["message"]
    request_id = completion["id"].removeprefix("chatcmpl-")
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        thinking = message["reasoning_content"]
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {}  # the answer stream holds calls until complete; this is a fallback
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{request_id}_{i}",
                "name": function.get("name") or "",
                "input": arguments if isinstance(arguments, dict) else {},
            }
        )
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), chat)
    usage = completion["usage"]
    return {
        "id": f"msg_{request_id}",
        "type": "message",
        "role": "assistant",
        "model": completion["model"],
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
        },
    }
