"""The fake upstream's Messages API: ``POST /v1/messages`` in front of its chat side, same faults.

A Messages request is translated into the chat request it stands for and answered by the fake's
chat side; what that side sends is translated into Anthropic's wire format as it is sent. So
the modes and options (``x-fake-mode`` or the ``model`` field, ``fail_every``, ``capacity``,
delays), the timing, the cuts, the counters and the answer's text are the chat side's, and one
scenario list covers both formats. Each fault, in Anthropic's words:

- ``error-in-stream``: an ``error`` event with ``overloaded_error`` inside the 200 stream, as
  Anthropic sends when it runs out of capacity mid-answer;
- ``keepalive``: ``message_start``, then only ``ping`` events (no content, ever);
- ``http503``, ``http429``, ``http:status=N`` (529 included): Anthropic's error body, its
  ``type`` from the status, ``Retry-After`` kept; beyond ``capacity``: 503 ``overloaded_error``;
- ``drop``, ``cut_after``: the connection cut mid-stream; ``garbage``: data that is not JSON;
  ``hang``: nothing at all.

A conversation ending with an assistant turn is a prefill: it is sent as the chat side's
native continuation, so it continues unless the fake ignores continuations
(``continuation=none``), as an endpoint that does not honour prefill starts over.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MESSAGES_PATHS", "MessagesAPI", "chat_request"]

MESSAGES_PATHS = frozenset({"/v1/messages", "/messages"})
_CHAT_PATH = "/v1/chat/completions"
# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors); 503 is the
# chat side's "busy", which Anthropic would call overloaded.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_JSON = b"application/json"


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def _error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


_PING = _event("ping", {})
_OVERLOADED = _error("overloaded_error", "Overloaded")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(b.get("text") or "")
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    arguments = orjson.dumps(block.get("input") or {}).decode()
    function = {"name": block.get("name"), "arguments": arguments}
    return {"id": block.get("id"), "type": "function", "function": function}


def chat_request(request: dict[str, Any]) -> dict[str, Any]:
    """The chat request a Messages request stands for (what the fake's chat side answers)."""
    messages: list[dict[str, Any]] = []
    system = _text(request.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for turn in request.get("messages") or ():
        if not isinstance(turn, dict):
            continue
        content = turn.get("content")
        blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
        if turn.get("role") == "assistant":
            message: dict[str, Any] = {"role": "assistant", "content": _text(content)}
            calls = [_tool_call(b) for b in blocks if b.get("type") == "tool_use"]
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
            continue
        for block in blocks:  # tool results answer the turn before, as chat's tool messages
            if block.get("type") == "tool_result":
                result = {"role": "tool", "tool_call_id": block.get("tool_use_id")}
                messages.append(result | {"content": _text(block.get("content"))})
        text = _text(content)
        if text or not blocks:
            messages.append({"role": "user", "content": text})
    body: dict[str, Any] = {"model": request.get("model"), "messages": messages}
    if messages and messages[-1]["role"] == "assistant":
        # A prefill: the chat side continues it with either native continuation it honours.
        messages[-1]["prefix"] = True
        body["continue_final_message"] = True
    body["stream"] = request.get("stream") is True
    body["stream_options"] = {"include_usage": True}
    tools = request.get("tools")
    if isinstance(tools, list):
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.get("name"), "parameters": t.get("input_schema")},
            }
            for t in tools
            if isinstance(t, dict)
        ]
    return body


class MessagesAPI:
    """ASGI: ``/v1/messages`` through the chat side, translated both ways; the rest passed on."""

    def __init__(self, chat: ASGIApp) -> None:
        self.chat = chat
        self._recorder: Any = chat  # the chat side's /_fake/last, when it has one

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in MESSAGES_PATHS:
            return await self.chat(scope, receive, send)
        if scope["method"] != "POST":
            return await _send_json(send, 405, _error("invalid_request_error", "Use POST"))
        raw = b""
        more = True
        while more:
            message = await receive()
            raw, more = raw + message.get("body", b""), message.get("more_body", False)
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            body = _error("invalid_request_error", "Request body must be a JSON object")
            return await _send_json(send, 400, body)
        translated = orjson.dumps(chat_request(request))
        given = False

        async def receive_chat() -> Message:
            nonlocal given
            if given:
                return await receive()  # after the body: the client's disconnect
            given = True
            return {"type": "http.request", "body": translated, "more_body": False}

        path = _CHAT_PATH.encode()
        chat_scope = {**scope, "path": _CHAT_PATH, "raw_path": path}
        model = request.get("model") if isinstance(request.get("model"), str) else ""
        answer = _Translator(send, str(model))
        await self.chat(chat_scope, receive_chat, answer.send)
        await answer.finish()
        if hasattr(self._recorder, "last"):
            self._recorder.last = raw  # /_fake/last shows the body as the client sent it


async def _send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", _JSON), (b"content-length", b"%d" % len(body)), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Translator:
    """The chat side's response, rewritten as the Messages API's while it is sent."""

    def __init__(self, send: Send, model: str) -> None:
        self.out = send
        self.model = model
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.events: _Events | None = None  # set for a 200 event stream
        self.body = b""
        self.complete = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers") or ())
            ctype = dict(self.headers).get(b"content-type", b"")
            if self.status == 200 and ctype.startswith(b"text/event-stream"):
                self.events = _Events(self.model)
                await self.out(message)
            return
        data, more = message.get("body", b""), message.get("more_body", False)
        self.complete = not more
        if self.events is not None:
            out = self.events.feed(data)
            if out or not more:
                await self.out({"type": "http.response.body", "body": out, "more_body": more})
            return
        self.body += data  # a whole JSON body, translated once complete
        if not more:
            await self._whole()

    async def _whole(self) -> None:
        status = self.status or 200
        try:
            body = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):  # garbage stays garbage
            return await _send_json(self.out, status, self.body)
        error = body.get("error")
        if isinstance(error, dict) or status != 200:
            message = (
                str((error or {}).get("message") or "error") if isinstance(error, dict) else ""
            )
            kind = _ERROR_TYPES.get(
                status, "api_error" if status >= 500 else "invalid_request_error"
            )
            if status == 200:
                kind = "overloaded_error"  # an error object in a 200 body: error-in-stream
            keep = [(k, v) for k, v in self.headers if k == b"retry-after"]
            return await _send_json(self.out, status, _error(kind, message), keep)
        await _send_json(self.out, status, orjson.dumps(_message(body, self.model)))

    async def finish(self) -> None:
        """The chat side returned: a body it left unfinished is cut here too."""
        if self.events is not None or self.complete or self.status is None:
            return
        # Announce more than is sent, then stop: the client sees a truncated body.
        headers = [(b"content-type", _JSON), (b"content-length", b"%d" % (len(self.body) * 2 + 1))]
        await self.out({"type": "http.response.start", "status": self.status, "headers": headers})
        await self.out({"type": "http.response.body", "body": self.body, "more_body": True})


def _message(completion: dict[str, Any], model: str) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        content.append(
            {"type": "thinking", "thinking": message["reasoning_content"], "signature": "fake"}
        )
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        arguments = orjson.loads(function.get("arguments") or "{}")
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": arguments,
            }
        )
    usage = completion.get("usage") or {}
    return {
        "id": str(completion.get("id") or "").replace("chatcmpl-", "msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP_REASONS.get(choice.get("finish_reason"), "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
        },
    }


class _Events:
    """The chat side's SSE as Anthropic's events, event by event as the bytes arrive."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.pending = b""
        self.started = False
        self.block: str | None = None  # the open content block: thinking, text or tool
        self.index = -1
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        self.pending += data
        out = bytearray()
        while b"\n\n" in self.pending:
            raw, self.pending = self.pending.split(b"\n\n", 1)
            out += self._translate(raw)
        return bytes(out)

    def _translate(self, raw: bytes) -> bytes:
        out = bytearray()
        if not self.started:
            self.started = True
            message: dict[str, Any] = {"id": "msg_fake", "type": "message", "role": "assistant"}
            message |= {"model": self.model, "content": [], "stop_reason": None}
            message |= {"stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
            out += _event("message_start", {"message": message}) + _PING
        if raw.startswith(b":"):  # the chat side's keep-alive comment
            return bytes(out) + _PING
        if not raw.startswith(b"data: "):
            return bytes(out)
        data = raw[6:]
        if data == b"[DONE]":
            return bytes(out) + self._end()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:  # garbage stays garbage
            return bytes(out) + b"event: content_block_delta\ndata: " + data + b"\n\n"
        if "error" in chunk:
            return bytes(out) + b"event: error\ndata: " + _OVERLOADED + b"\n\n"
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self._open("thinking", {"type": "thinking", "thinking": ""})
                out += self._delta(
                    {"type": "thinking_delta", "thinking": delta["reasoning_content"]}
                )
            if delta.get("content"):
                out += self._open("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": delta["content"]})
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                if call.get("id"):
                    block = {"type": "tool_use", "id": call["id"], "name": function.get("name")}
                    out += self._open("tool", block | {"input": {}}, new=True)
                if function.get("arguments"):
                    out += self._delta(
                        {"type": "input_json_delta", "partial_json": function["arguments"]}
                    )
            self.finish = choice.get("finish_reason") or self.finish
        return bytes(out)

    def _open(self, kind: str, block: dict[str, Any], new: bool = False) -> bytes:
        if self.block == kind and not new:
            return b""
        out = self._close()
        self.block = kind
        self.index += 1
        return out + _event("content_block_start", {"index": self.index, "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"index": self.index, "delta": delta})

    def _close(self) -> bytes:
        if self.block is None:
            return b""
        self.block = None
        return _event("content_block_stop", {"index": self.index})

    def _end(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        delta = {
            "stop_reason": _STOP_REASONS.get(self.finish or "stop", "end_turn"),
            "stop_sequence": None,
        }
        usage = {
            "input_tokens": self.usage.get("prompt_tokens", 0),
            "output_tokens": self.usage.get("completion_tokens", 0),
        }
        out = self._close() + _event("message_delta", {"delta": delta, "usage": usage})
        return out + _event("message_stop", {})
