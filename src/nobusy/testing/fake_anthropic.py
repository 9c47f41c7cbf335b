"""The fake upstream's Anthropic side: ``POST /v1/messages`` with the same faults as its chat side.

A request picks its fault exactly as on the chat side (``x-fake-mode`` or the ``model`` field,
with the same modes and options), and the answer's text is the chat side's, so one scenario
list covers both wire formats and a healthy answer compares equal across them. What differs
is the wire: Anthropic's events (``message_start``, ``ping``, ``content_block_*``,
``message_delta``, ``message_stop``) and its error shape. Faults in Anthropic's words:

- ``error-in-stream``: an ``error`` event inside the 200 stream, ``overloaded_error`` unless
  ``status`` names another (as Anthropic sends when it runs out of capacity mid-answer);
- ``keepalive``: ``message_start``, then only ``ping`` events;
- ``http:status=529``, ``http429``, ``http503``: Anthropic's error bodies, with ``Retry-After``;
- ``capacity`` exceeded: 529 ``overloaded_error``.

A conversation ending with an assistant turn is a prefill: the answer continues after it,
unless ``continuation=none``, which ignores it and starts over (as an endpoint that does not
honour prefill would).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Scope, Send

from nobusy.testing.fake_upstream import (
    _RESTATED_WORDS,
    _RETRY_AFTER_STATUSES,
    BUSY_MESSAGE,
    KEEPALIVE_INTERVAL,
    SLOW_CHUNK_DELAY,
    FakeOptions,
    _body,
    _conversation,
    _remainder,
    _send_json,
    _stream,
    _text_of,
    _Watch,
    answer_pieces,
    reasoning_pieces,
)

if TYPE_CHECKING:
    from nobusy.testing.fake_upstream import _FakeApp

__all__ = ["answer", "bad_json", "http_error"]

_TOOL_USE_ID = "toolu_fake_1"
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors).
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid parameter: temperature"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource"),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed size"),
    429: ("rate_limit_error", "Rate limit reached, please try again later"),
    500: ("api_error", "Internal server error"),
    503: ("api_error", BUSY_MESSAGE),
    529: ("overloaded_error", "Overloaded"),
}


def _error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def _error_for(status: int) -> bytes:
    kind, message = _ERRORS.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", f"Fake error {status}")
    )
    return _error(kind, message)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


async def bad_json(send: Send) -> None:
    """A body that is not a JSON object, refused in Anthropic's words."""
    body = _error("invalid_request_error", "Request body must be a JSON object")
    await _send_json(send, 400, body)


async def http_error(send: Send, status: int, opts: FakeOptions, model: str = "") -> None:
    """An error status with Anthropic's body (and Retry-After where the chat side sends it)."""
    body = _error_for(status)
    if status == 400 and "context" in model:
        body = _error("invalid_request_error", "prompt is too long: 10 tokens > 5 maximum")
    retry: list[tuple[bytes, bytes]] = []
    if status in _RETRY_AFTER_STATUSES and opts.retry_after >= 0:
        retry = [(b"retry-after", b"%d" % opts.retry_after)]
    await _send_json(send, status, body, retry)


def _chat_view(request: dict[str, Any], opts: FakeOptions) -> tuple[list[Any], str | None, bool]:
    """The conversation as the chat side reads it, so both sides give the same answer: a user
    turn of tool results only is a tool message, and a trailing assistant turn a prefix."""
    raw = request.get("messages")
    messages: list[dict[str, Any]] = []
    for message in raw if isinstance(raw, list) else ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if (
            message.get("role") == "user"
            and isinstance(content, list)
            and content
            and all(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
        ):
            messages.append({"role": "tool", "content": ""})
        else:
            messages.append(message)
    honoured = "none" if opts.continuation == "none" else "prefix"
    if messages and messages[-1].get("role") == "assistant":
        messages[-1] = {**messages[-1], "prefix": True}
    return _conversation({"messages": messages}, True, honoured, opts.tokens)


def _tool(request: dict[str, Any], messages: list[Any]) -> tuple[str, list[str]] | None:
    tools = request.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    name = tools[0].get("name")
    question = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            question = " ".join(_text_of(message.get("content")).split())
            break
    arguments = orjson.dumps({"query": question}).decode()
    step = -(-len(arguments) // 4)
    fragments = [arguments[i : i + step] for i in range(0, len(arguments), step)]
    return (name if isinstance(name, str) else "tool"), fragments


async def answer(
    app: _FakeApp, request: dict[str, Any], scope: Scope, watch: _Watch, send: Send
) -> None:
    """Answer one ``/v1/messages`` request in its mode, streamed or not."""
    try:
        model, mode, opts = app._choose(request, scope)
    except ValueError as exc:
        return await _send_json(send, 400, _error("invalid_request_error", str(exc)))
    if mode in ("http503", "http429", "http"):
        status = {"http503": 503, "http429": 429}.get(mode, opts.status or 500)
        return await http_error(send, status, opts, model)
    stream = request.get("stream") is True
    if mode == "hang":
        await watch.gone_after(None)
        return
    if mode == "keepalive":
        return await _pings(send, watch, opts, stream, model)

    messages, partial, restate = _chat_view(request, opts)
    content = answer_pieces(messages, opts.tokens)
    if partial is not None:
        content = _remainder(content, partial)
        if restate:
            content.insert(0, " ".join(partial.split()[-_RESTATED_WORDS:]))
    reasoning = (
        reasoning_pieces(messages, opts.tokens) if mode == "reasoning" and partial is None else []
    )
    tool = _tool(request, messages) if mode == "tool-call" else None
    sent = len(tool[1]) if tool else len(reasoning) + len(content)
    prompt_tokens = sum(len(_text_of(m.get("content")).split()) for m in messages)
    usage = {"input_tokens": prompt_tokens + len((partial or "").split()), "output_tokens": sent}
    gap = opts.chunk_delay or (SLOW_CHUNK_DELAY if mode == "slow" else 0.0)
    ident = f"msg_fake_{next(app.ids)}"
    stop_reason = "tool_use" if tool else "end_turn"

    if not stream:
        if mode == "garbage":
            body = b'{"content": ['
        elif mode == "error-in-stream":
            body = _error_for(opts.status or 529)
        else:
            blocks: list[dict[str, Any]] = []
            if reasoning:
                thinking = "".join(reasoning)
                blocks.append({"type": "thinking", "thinking": thinking, "signature": "fake"})
            if tool:
                arguments = orjson.loads("".join(tool[1]))
                use: dict[str, Any] = {"type": "tool_use", "id": _TOOL_USE_ID, "name": tool[0]}
                blocks.append(use | {"input": arguments})
            else:
                blocks.append({"type": "text", "text": "".join(content)})
            message: dict[str, Any] = {
                "id": ident,
                "type": "message",
                "role": "assistant",
                "model": model,
            }
            message |= {"content": blocks, "stop_reason": stop_reason, "stop_sequence": None}
            body = orjson.dumps(message | {"usage": usage})
        wait = opts.delay + gap * max(sent - 1, 0)
        if wait > 0 and await watch.gone_after(wait):
            return
        if mode != "drop":
            return await _send_json(send, 200, body)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(_body(body[: len(body) // 2], True))
        return

    start: dict[str, Any] = {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
    }
    start |= {"stop_reason": None, "stop_sequence": None}
    start["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
    head = [_event("message_start", {"message": start}), _event("ping", {})]
    units: list[bytes] = []
    last = 0  # the index of the content block the answer ends in
    if tool:
        block = {"type": "tool_use", "id": _TOOL_USE_ID, "name": tool[0], "input": {}}
        head.append(_block_start(0, block))
        for fragment in tool[1]:
            units.append(_block_delta(0, {"type": "input_json_delta", "partial_json": fragment}))
    else:
        opening = b""
        if reasoning:
            head.append(_block_start(0, {"type": "thinking", "thinking": ""}))
            for piece in reasoning:
                units.append(_block_delta(0, {"type": "thinking_delta", "thinking": piece}))
            # The text block opens with the first text unit, so a cut counts units alike.
            opening = _block_delta(0, {"type": "signature_delta", "signature": "fake"})
            opening += _event("content_block_stop", {"index": 0})
            last = 1
            opening += _block_start(last, {"type": "text", "text": ""})
        else:
            head.append(_block_start(0, {"type": "text", "text": ""}))
        for i, piece in enumerate(content):
            unit = _block_delta(last, {"type": "text_delta", "text": piece})
            units.append(opening + unit if i == 0 else unit)
    ending: dict[str, Any] = {"stop_reason": stop_reason, "stop_sequence": None}
    tail = _event("content_block_stop", {"index": last})
    tail += _event("message_delta", {"delta": ending, "usage": {"output_tokens": sent}})
    tail += _event("message_stop", {})

    complete = True
    if opts.cut_after is not None:  # any mode: cut the connection after that many units
        units, tail, complete = units[: max(opts.cut_after, 0)], b"", False
    elif mode == "drop":
        units, tail, complete = units[: max(opts.drop_after, 0)], b"", False
    elif mode == "garbage":
        units, tail = units[:1], b"event: content_block_delta\ndata: {not json!!\n\n"
    elif mode == "error-in-stream":
        units = units[:2]
        tail = b"event: error\ndata: " + _error_for(opts.status or 529) + b"\n\n"
    await _stream(send, watch, opts.delay, gap, head, units, tail, complete)


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return _event("content_block_start", {"index": index, "content_block": block})


def _block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event("content_block_delta", {"index": index, "delta": delta})


async def _pings(send: Send, watch: _Watch, opts: FakeOptions, stream: bool, model: str) -> None:
    """A stream that looks alive and says nothing: message_start, then only pings."""
    if opts.delay > 0 and await watch.gone_after(opts.delay):
        return
    headers = _SSE_HEADERS if stream else [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if stream:
        start: dict[str, Any] = {
            "id": "msg_fake_ping",
            "type": "message",
            "role": "assistant",
            "model": model,
        }
        start |= {"content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}
        await send(_body(_event("message_start", {"message": start}), True))
    beat = _event("ping", {}) if stream else b"\n"
    while True:
        await send(_body(beat, True))
        if await watch.gone_after(KEEPALIVE_INTERVAL):
            return
