"""Anthropic's Messages API in: a ``/v1/messages`` body read into the internal chat request.

The body is checked as Anthropic documents it (https://docs.anthropic.com/en/api/messages):
``max_tokens`` required, roles ``user``/``assistant``, content a string or blocks. Then it is
translated to the OpenAI chat body every upstream kind takes: ``system`` becomes the first
message, ``tool_use`` blocks the assistant's ``tool_calls``, each ``tool_result`` a ``tool``
message, images ``image_url`` parts, ``thinking`` blocks ``reasoning_content`` (passed back as
DeepSeek asks on tool-call turns), custom ``tools`` functions, ``stop_sequences`` ``stop``.
The answer goes back out through ``anthropic_events``.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec
import orjson

from nobusy.errors import InvalidRequest
from nobusy.protocols.anthropic_events import MessagesEvents, render_message
from nobusy.routing.relay import Encoder
from nobusy.schema import ChatRequest, invalid_request, parse_json_object
from nobusy.store.usage import UsageRecord

__all__ = ["ANTHROPIC_MESSAGES", "AnthropicMessages", "count_tokens", "parse_messages_request"]

T = TypeVar("T")


class _Message(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class _Counted(msgspec.Struct):
    """The fields of a Messages body that translate; ``count_tokens`` takes these."""

    model: str
    messages: list[_Message]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class _Request(_Counted):
    max_tokens: int | None = None  # required: checked by hand, to say so in Anthropic's words
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None


class AnthropicMessages:
    """The ``ClientProtocol`` of ``/v1/messages``: Anthropic's events and message out."""

    def encoder(self, chat: ChatRequest, record: UsageRecord) -> Encoder:
        return MessagesEvents(chat, record)

    def render(self, completion: dict[str, Any], chat: ChatRequest) -> dict[str, Any]:
        return render_message(completion, chat)


ANTHROPIC_MESSAGES = AnthropicMessages()


def parse_messages_request(raw: bytes) -> tuple[ChatRequest, dict[str, Any]]:
    """A Messages body as (typed view, chat body to send upstream), or InvalidRequest."""
    request = _convert(raw, _Request)
    if request.max_tokens is None:
        raise InvalidRequest("max_tokens: Field required.", param="max_tokens")
    if request.max_tokens < 1:
        raise InvalidRequest("max_tokens: must be at least 1.", param="max_tokens")
    body = _chat_body(request)
    body["max_tokens"] = request.max_tokens
    body["stream"] = request.stream
    if request.stream:
        # The usage chunk feeds message_delta's usage; the client never sees it as such.
        body["stream_options"] = {"include_usage": True}
    if request.stop_sequences:
        body["stop"] = request.stop_sequences
    if request.temperature is not None:
        if not 0 <= request.temperature <= 1:
            raise InvalidRequest("temperature: must be between 0 and 1.", param="temperature")
        body["temperature"] = request.temperature
    if request.top_p is not None:
        if not 0 <= request.top_p <= 1:
            raise InvalidRequest("top_p: must be between 0 and 1.", param="top_p")
        body["top_p"] = request.top_p
    if request.top_k is not None:
        body["top_k"] = request.top_k  # vLLM, SGLang and llama.cpp take it as Anthropic does
    user = (request.metadata or {}).get("user_id")
    if isinstance(user, str) and user:
        body["user"] = user
    try:
        chat = msgspec.convert(body, ChatRequest)
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None
    return chat, body


def count_tokens(raw: bytes) -> tuple[str, int]:
    """(model, estimated input tokens) of a ``count_tokens`` body: the translated request's
    bytes / 4, the estimate admission uses (``admission.limits.estimate_tokens``)."""
    request = _convert(raw, _Counted)
    body = _chat_body(request)
    return request.model, max(1, len(orjson.dumps(body)) // 4)


def _convert(raw: bytes, kind: type[T]) -> T:
    body = parse_json_object(raw, "a JSON object with `model`, `messages` and `max_tokens`")
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None


def _chat_body(request: _Counted) -> dict[str, Any]:
    if not request.model:
        raise InvalidRequest("model: must not be empty.", param="model")
    if not request.messages:
        raise InvalidRequest("messages: at least one message is required.", param="messages")
    messages: list[dict[str, Any]] = []
    system = _system(request.system)
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(request.messages):
        where = f"messages.{i}.content"
        if message.role == "user":
            messages.extend(_user(message.content, where))
        else:
            messages.append(_assistant(message.content, where))
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.tools:
        body["tools"] = [_tool(tool, f"tools.{i}") for i, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        _tool_choice(request.tool_choice, body)
    if request.thinking is not None:
        _thinking(request.thinking, body)
    return body


def _system(system: str | list[dict[str, Any]] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for i, block in enumerate(system):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest(
                f"system.{i}: system blocks must be text blocks "
                '({"type": "text", "text": "..."}).',
                param=f"system.{i}",
            )
        texts.append(block["text"])
    return "\n\n".join(texts)


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _wrong_block(where: str, kind: object, allowed: str) -> InvalidRequest:
    return InvalidRequest(
        f"{where}: unexpected content block type {kind!r}; expected one of {allowed}.",
        param=f"{where}.type",
    )


def _user(content: str | list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """One user turn: its tool results as ``tool`` messages first (they answer the turn before,
    as OpenAI requires), then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.{j}"
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, at)})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str) or not tool_use_id:
                raise InvalidRequest(
                    f"{at}.tool_use_id: Field required.", param=f"{at}.tool_use_id"
                )
            text, images = _tool_result(block.get("content"), at)
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": tool_use_id, "content": text})
            parts.extend(images)  # OpenAI's tool messages take text only
        else:
            raise _wrong_block(at, kind, "'text', 'image', 'tool_result'")
    if not parts:
        return results
    if all(part["type"] == "text" for part in parts):
        return [*results, {"role": "user", "content": "".join(p["text"] for p in parts)}]
    return [*results, {"role": "user", "content": parts}]


def _assistant(content: str | list[dict[str, Any]], where: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant"}
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content)):
        at = f"{where}.{j}"
        kind = block.get("type")
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use":
            name, tool_id = block.get("name"), block.get("id")
            if not isinstance(name, str) or not isinstance(tool_id, str):
                raise InvalidRequest(
                    f"{at}: a tool_use block needs 'id' and 'name'.", param=f"{at}.name"
                )
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": name, "arguments": arguments}
            calls.append({"id": tool_id, "type": "function", "function": function})
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking") or ""))
        elif kind == "redacted_thinking":
            continue  # encrypted by Anthropic: nothing another model could read
        else:
            raise _wrong_block(at, kind, "'text', 'tool_use', 'thinking', 'redacted_thinking'")
    message["content"] = "".join(texts) or (None if calls else "")
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return message


def _text(block: dict[str, Any], at: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{at}.text: Field required (a string).", param=f"{at}.text")
    return text


def _image(block: dict[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        source = {}
    if source.get("type") == "base64" and source.get("media_type") and source.get("data"):
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif source.get("type") == "url" and source.get("url"):
        url = source["url"]
    else:
        raise InvalidRequest(
            f"{at}.source: an image needs a source of type 'base64' (media_type, data) or "
            "'url' (url).",
            param=f"{at}.source",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(content: object, at: str) -> tuple[str, list[dict[str, Any]]]:
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise InvalidRequest(
            f"{at}.content: a string or a list of text and image blocks.", param=f"{at}.content"
        )
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for k, block in enumerate(content):
        inner = f"{at}.content.{k}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text(block, inner))
        elif kind == "image":
            images.append(_image(block, inner))
        else:
            raise _wrong_block(inner, kind, "'text', 'image'")
    return "".join(texts), images


def _tool(tool: dict[str, Any], at: str) -> dict[str, Any]:
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise InvalidRequest(
            f"{at}.type: {kind!r} is one of Anthropic's server tools, which only Anthropic runs; "
            "nobusy passes custom tools (name, description, input_schema).",
            param=f"{at}.type",
        )
    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{at}.name: Field required.", param=f"{at}.name")
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{at}.input_schema: Field required.", param=f"{at}.input_schema")
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any], body: dict[str, Any]) -> None:
    kind = choice.get("type")
    if kind == "auto":
        body["tool_choice"] = "auto"
    elif kind == "any":
        body["tool_choice"] = "required"
    elif kind == "none":
        body["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise InvalidRequest(
            "tool_choice: expected type 'auto', 'any', 'none', or 'tool' with a 'name'.",
            param="tool_choice",
        )
    if choice.get("disable_parallel_tool_use") and kind != "none":
        body["parallel_tool_calls"] = False


def _thinking(thinking: dict[str, Any], body: dict[str, Any]) -> None:
    """Extended thinking as OpenAI's ``reasoning_effort``, its level from the token budget
    (OpenAI, vLLM and llama.cpp read it; the reasoning comes back as ``thinking`` blocks)."""
    kind = thinking.get("type")
    if kind == "disabled":
        return
    if kind != "enabled":
        raise InvalidRequest(
            "thinking.type: expected 'enabled' (with budget_tokens) or 'disabled'.",
            param="thinking.type",
        )
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1:
        raise InvalidRequest(
            "thinking.budget_tokens: a positive integer is required.",
            param="thinking.budget_tokens",
        )
    body["reasoning_effort"] = "low" if budget < 4096 else "medium" if budget < 16384 else "high"
