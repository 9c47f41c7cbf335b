"""The Messages API's wire format for ``kind: anthropic``: the internal request out, chunks in.

Out: the internal chat body becomes a Messages body (https://docs.anthropic.com/en/api/messages).
System messages join ``system``; ``tool_calls`` become ``tool_use`` blocks and ``tool``
messages ``tool_result`` blocks in the next user turn; ``image_url`` parts ``image`` blocks;
consecutive turns of one role are merged (Anthropic alternates roles); ``stop`` becomes
``stop_sequences``, ``reasoning_effort`` a ``thinking`` budget, ``user`` ``metadata.user_id``;
``max_tokens``, which Anthropic requires, comes from the route when the client sets none.
A conversation ending with the assistant is a prefill, which the Messages API continues where
it stops: that is how a cut answer continues here.

In: Anthropic's stream events (https://docs.anthropic.com/en/docs/build-with-claude/streaming)
become ``chat.completion.chunk`` dicts: ``message_start`` the role chunk, ``text_delta``
content, ``thinking_delta`` ``reasoning_content``, a ``tool_use`` block and its
``input_json_delta`` a tool call, ``message_delta`` the finish, ``message_stop`` the usage.
``ping`` yields nothing, so keep-alives never count as progress; an ``error`` event inside the
200 stream is a failure (``overloaded_error`` counts as busy). Event types this module does
not know are skipped, as Anthropic's versioning policy asks of clients
(https://docs.anthropic.com/en/api/versioning); data that is not a JSON object is a
protocol error.
"""

from __future__ import annotations

from typing import Any

import orjson

from nobusy.errors import (
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRejectedRequest,
)
from nobusy.upstreams.base import Chunk

__all__ = [
    "EventReader",
    "error_from_body",
    "message_chunks",
    "messages_body",
    "stream_error",
]

# reasoning_effort → thinking budget_tokens (Anthropic's minimum budget is 1024).
_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384}
_MIN_BUDGET = 1024
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Errors inside a 200 stream that mean "busy", not "broken" (https://docs.anthropic.com/en/api/errors).
_BUSY_ERRORS = {"overloaded_error": 529, "rate_limit_error": 429}


def _reject(message: str, upstream: str) -> UpstreamRejectedRequest:
    return UpstreamRejectedRequest(message, upstream=upstream, status=400)


def messages_body(
    body: dict[str, Any], model: str, max_tokens: int, upstream: str
) -> dict[str, Any]:
    """The Messages body that asks ``upstream`` what the chat ``body`` asks, always streamed;
    UpstreamRejectedRequest for what the Messages API cannot express."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(body.get("messages") or ()):
        if not isinstance(message, dict):
            raise _reject(f"messages.{i}: a message must be an object", upstream)
        role = message.get("role")
        where = f"messages.{i}"
        if role in ("system", "developer"):
            text = _text(message.get("content"), where, upstream)
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), where, upstream)
        elif role == "assistant":
            blocks = _assistant_blocks(message, where, upstream)
        elif role == "tool":
            role = "user"
            result = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id") or ""),
                "content": _text(message.get("content"), where, upstream),
            }
            blocks = [result]
        else:
            raise _reject(f"{where}.role: {role!r} has no Messages API equivalent", upstream)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    prefill = bool(turns) and turns[-1]["role"] == "assistant"
    if prefill:
        # Anthropic refuses a prefill that ends in whitespace; the cut answer's continuation
        # keeps it back already (routing.continuation), a client's own prefill may not.
        last = turns[-1]["content"][-1]
        if last.get("type") == "text":
            last["text"] = last["text"].rstrip()
            if not last["text"]:
                turns[-1]["content"].pop()
                if not turns[-1]["content"]:
                    turns.pop()
                    prefill = False
    if not turns:
        raise _reject("messages: at least one user message is required", upstream)
    out: dict[str, Any] = {"model": model, "messages": turns, "stream": True}
    if system:
        out["system"] = "\n\n".join(system)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = limit if isinstance(limit, int) and limit > 0 else max_tokens
    stop = body.get("stop")
    if isinstance(stop, str) and stop:
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [s for s in stop if isinstance(s, str) and s]
    for name in ("top_p", "top_k"):
        if isinstance(body.get(name), int | float):
            out[name] = body[name]
    temperature = body.get("temperature")
    if isinstance(temperature, int | float):
        out["temperature"] = min(float(temperature), 1.0)  # Anthropic's range is 0..1
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    _tools(body, out, upstream)
    if not prefill:  # a prefill continues an answer whose thinking is over
        _thinking(body.get("reasoning_effort"), out)
    return out


def _text(content: Any, where: str, upstream: str) -> str:
    """A message's text: a string, or the text of its parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text") or ""))
            else:
                raise _reject(f"{where}.content: only text parts are allowed here", upstream)
        return "".join(texts)
    raise _reject(f"{where}.content: a string or a list of parts", upstream)


def _user_blocks(content: Any, where: str, upstream: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _reject(f"{where}.content: a string or a list of parts", upstream)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = str(part.get("text") or "")
            if text:  # Anthropic refuses empty text blocks
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}.content.{j}", upstream))
        else:
            raise _reject(
                f"{where}.content.{j}: part type {kind!r} has no Messages API equivalent",
                upstream,
            )
    return blocks


def _image(image: Any, where: str, upstream: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise _reject(f"{where}.image_url: a url is required", upstream)
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise _reject(f"{where}.image_url: a data URL must be base64", upstream)
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant_blocks(message: dict[str, Any], where: str, upstream: str) -> list[dict[str, Any]]:
    # reasoning_content is not sent back: Anthropic accepts earlier thinking only with the
    # signature it made, which an answer from another upstream does not have.
    blocks: list[dict[str, Any]] = []
    text = _text(message.get("content"), where, upstream)
    if text:
        blocks.append({"type": "text", "text": text})
    for k, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _reject(f"{where}.tool_calls.{k}: a function call needs a name", upstream)
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            raise _reject(
                f"{where}.tool_calls.{k}.function.arguments: not valid JSON", upstream
            ) from None
        if not isinstance(arguments, dict):
            raise _reject(
                f"{where}.tool_calls.{k}.function.arguments: must be a JSON object", upstream
            )
        tool_id = call.get("id") or f"toolu_{k}"
        use = {"type": "tool_use", "id": tool_id, "name": function["name"], "input": arguments}
        blocks.append(use)
    return blocks


def _tools(body: dict[str, Any], out: dict[str, Any], upstream: str) -> None:
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        converted = []
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(function, dict):
                raise _reject(f"tools.{i}: only function tools can be sent", upstream)
            schema = function.get("parameters")
            entry: dict[str, Any] = {
                "name": function.get("name"),
                "input_schema": schema or {"type": "object", "properties": {}},
            }
            if isinstance(function.get("description"), str):
                entry["description"] = function["description"]
            converted.append(entry)
        out["tools"] = converted
    choice = body.get("tool_choice")
    converted_choice: dict[str, Any] | None = None
    if choice == "auto":
        converted_choice = {"type": "auto"}
    elif choice == "required":
        converted_choice = {"type": "any"}
    elif choice == "none":
        converted_choice = {"type": "none"}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise _reject("tool_choice: a function choice needs a name", upstream)
        converted_choice = {"type": "tool", "name": name}
    if body.get("parallel_tool_calls") is False and "tools" in out:
        converted_choice = converted_choice or {"type": "auto"}
        if converted_choice["type"] != "none":
            converted_choice["disable_parallel_tool_use"] = True
    if converted_choice is not None:
        out["tool_choice"] = converted_choice


def _thinking(effort: Any, out: dict[str, Any]) -> None:
    budget = _BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None:
        return
    # Anthropic wants the budget below max_tokens, and thinking without a forced tool or
    # changed sampling (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking).
    budget = min(budget, out["max_tokens"] - 1)
    if budget < _MIN_BUDGET or (out.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    for name in ("temperature", "top_k", "top_p"):
        out.pop(name, None)


def error_from_body(body: Any) -> tuple[str, str]:
    """(Anthropic's error type, its message) from an error body, whatever its shape."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind = str(error.get("type") or "")
        return kind, str(error.get("message") or kind or "no message")
    return "", str(error or body)[:300]


def stream_error(body: Any, upstream: str) -> UpstreamError:
    """An ``error`` event inside a 200 stream: busy for overloads, else a broken answer."""
    kind, message = error_from_body(body)
    status = _BUSY_ERRORS.get(kind)
    if status is not None:
        return UpstreamOverloaded(f"{kind} in stream: {message}", upstream=upstream, status=status)
    return UpstreamProtocolError(f"error in stream: {message}", upstream=upstream, status=200)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> Chunk:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"object": "chat.completion.chunk", "choices": [choice]}


def _call(ordinal: int, block: dict[str, Any], arguments: str) -> dict[str, Any]:
    """The opening delta of tool call ``ordinal`` from its ``tool_use`` block."""
    return {
        "index": ordinal,
        "id": str(block.get("id") or f"toolu_{ordinal}"),
        "type": "function",
        "function": {"name": str(block.get("name") or ""), "arguments": arguments},
    }


class EventReader:
    """One streamed Messages answer, event by event, as the internal chunks."""

    __slots__ = ("blocks", "finished", "input_tokens", "output_tokens", "stopped", "upstream")

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        # Open content blocks by index: "text", "thinking", "skip", or a tool call as
        # [its ordinal, its start input, whether arguments came].
        self.blocks: dict[int, Any] = {}
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.finished = False  # message_delta with a stop_reason seen
        self.stopped = False  # message_stop seen

    def _broken(self, what: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"bad Messages event: {what}", upstream=self.upstream)

    def read(self, name: str, data: str) -> Chunk | None:
        """The chunk one event stands for, if any; UpstreamError for a failure or nonsense."""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(
                "upstream sent malformed JSON in its event stream", upstream=self.upstream
            ) from None
        if not isinstance(event, dict):
            raise UpstreamProtocolError("upstream sent a non-object event", upstream=self.upstream)
        kind = event.get("type") or name
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "ping":
            return None  # a keep-alive: not progress
        if kind == "message_start":
            message = event.get("message")
            if not isinstance(message, dict):
                raise self._broken("message_start without a message")
            self._usage(message.get("usage"))
            return _chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            return self._start(event)
        if kind == "content_block_stop":
            return self._stop(event)
        if kind == "message_delta":
            delta = event.get("delta")
            self._usage(event.get("usage"))
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if not isinstance(reason, str):
                return None
            self.finished = True
            finish = _chunk({}, _FINISH.get(reason, "stop"))
            sequence = delta.get("stop_sequence") if isinstance(delta, dict) else None
            if reason == "stop_sequence" and isinstance(sequence, str):
                # As vLLM names it: the Messages encoder turns it back into stop_sequence.
                finish["choices"][0]["stop_reason"] = sequence
            return finish
        if kind == "message_stop":
            self.stopped = True
            return self.usage_chunk()
        if kind == "error":
            raise stream_error(event, self.upstream)
        return None  # a newer event type: skipped, as Anthropic asks of clients

    def _index(self, event: dict[str, Any]) -> int:
        index = event.get("index")
        if not isinstance(index, int):
            raise self._broken(f"{event.get('type')} without an index")
        return index

    def _start(self, event: dict[str, Any]) -> Chunk | None:
        index = self._index(event)
        block = event.get("content_block")
        if not isinstance(block, dict):
            raise self._broken("content_block_start without a content_block")
        kind = block.get("type")
        if kind == "text":
            self.blocks[index] = "text"
            text = block.get("text")
            return _chunk({"content": text}) if isinstance(text, str) and text else None
        if kind == "thinking":
            self.blocks[index] = "thinking"
            thought = block.get("thinking")
            if isinstance(thought, str) and thought:
                return _chunk({"reasoning_content": thought})
            return None
        if kind == "tool_use":
            ordinal = sum(1 for b in self.blocks.values() if isinstance(b, list))
            self.blocks[index] = [ordinal, block.get("input"), False]
            return _chunk({"tool_calls": [_call(ordinal, block, "")]})
        self.blocks[index] = "skip"  # redacted thinking, server tools: nothing to relay
        return None

    def _delta(self, event: dict[str, Any]) -> Chunk | None:
        index = event.get("index")
        block = self.blocks.get(index) if isinstance(index, int) else None
        delta = event.get("delta")
        if block is None or not isinstance(delta, dict):
            raise self._broken("a delta for a content block that was not started")
        kind = delta.get("type")
        if kind == "text_delta" and block == "text":
            text = delta.get("text")
            return _chunk({"content": text}) if isinstance(text, str) and text else None
        if kind == "thinking_delta" and block == "thinking":
            thought = delta.get("thinking")
            if isinstance(thought, str) and thought:
                return _chunk({"reasoning_content": thought})
            return None
        if kind == "input_json_delta" and isinstance(block, list):
            partial = delta.get("partial_json")
            if not isinstance(partial, str) or not partial:
                return None
            block[2] = True
            function = {"arguments": partial}
            return _chunk({"tool_calls": [{"index": block[0], "function": function}]})
        return None  # signature, citations, or a newer delta type

    def _stop(self, event: dict[str, Any]) -> Chunk | None:
        block = self.blocks.pop(self._index(event), None)
        if not isinstance(block, list) or block[2]:
            return None
        # A call whose input came whole in its start (or had none): its arguments now, as
        # JSON, so a client's json.loads never meets an empty string.
        start = block[1] if isinstance(block[1], dict) else {}
        function = {"arguments": orjson.dumps(start).decode()}
        return _chunk({"tool_calls": [{"index": block[0], "function": function}]})

    def _usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        tokens = [usage.get(k) for k in _INPUT_FIELDS]
        counted = [t for t in tokens if isinstance(t, int)]
        if counted:
            self.input_tokens = sum(counted)
        output = usage.get("output_tokens")
        if isinstance(output, int):
            self.output_tokens = output  # cumulative in message_delta

    def usage_chunk(self) -> Chunk | None:
        """The usage as the upstream reported it; None when it reported none."""
        if self.output_tokens is None:
            return None
        prompt = self.input_tokens or 0
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": self.output_tokens,
            "total_tokens": prompt + self.output_tokens,
        }
        self.output_tokens = None  # reported once
        return {"object": "chat.completion.chunk", "choices": [], "usage": usage}


# Prompt tokens are the uncached input plus what was written to and read from the cache.
_INPUT_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def message_chunks(message: Any, upstream: str) -> list[Chunk]:
    """A whole ``message`` object (a server that answered without streaming) as chunks."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise UpstreamProtocolError("upstream answered without an event stream", upstream=upstream)
    reader = EventReader(upstream)
    reader._usage(message.get("usage"))
    chunks = [_chunk({"role": "assistant", "content": ""})]
    ordinal = 0
    for block in message["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and block.get("text"):
            chunks.append(_chunk({"content": str(block["text"])}))
        elif kind == "thinking" and block.get("thinking"):
            chunks.append(_chunk({"reasoning_content": str(block["thinking"])}))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            chunks.append(_chunk({"tool_calls": [_call(ordinal, block, arguments)]}))
            ordinal += 1
    reason = message.get("stop_reason")
    finish = _FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"
    chunks.append(_chunk({}, finish))
    usage = reader.usage_chunk()
    if usage is not None:
        chunks.append(usage)
    return chunks
