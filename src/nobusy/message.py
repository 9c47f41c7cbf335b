"""The assistant message that an answer's streamed deltas add up to.

One builder for everything that assembles an answer: the non-streaming response, the audit
log's record of what the client received, the output filter holding tool calls until they
are complete. Tool-call deltas are merged per ``index`` as OpenAI streams them: the first
carries ``id``, ``type`` and the function's name, the next ones pieces of its arguments.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MessageBuilder", "merge_tool_call"]


def merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """Add one tool-call delta to the calls built so far, by its ``index``."""
    index = int(delta.get("index") or 0)
    call = calls.setdefault(
        index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    if function.get("name"):
        call["function"]["name"] += function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]


class MessageBuilder:
    """Feed it each chunk's first choice; ``message()`` is the assistant message so far."""

    __slots__ = ("content", "finish_reason", "reasoning", "stop_reason", "tool_calls")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        # The stop sequence that ended the answer, where the upstream says (vLLM's
        # `stop_reason`): the Messages API reports it as `stop_sequence`.
        self.stop_reason: str | None = None

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if delta.get("content"):
            self.content.append(delta["content"])
        if delta.get("reasoning_content"):
            self.reasoning.append(delta["reasoning_content"])
        for call in delta.get("tool_calls") or ():
            merge_tool_call(self.tool_calls, call)
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        stop = choice.get("stop_reason")
        if isinstance(stop, str):
            self.stop_reason = stop

    def message(self) -> dict[str, Any]:
        """``content`` is null only when the message has tool calls, as OpenAI sends it."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        elif message["content"] is None:
            message["content"] = ""
        return message
