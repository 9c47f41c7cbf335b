"""A fault-injecting fake OpenAI-compatible upstream for tests, benchmarks and failure drills.

It also speaks Anthropic's Messages API (``POST /v1/messages``, ``testing.fake_anthropic``):
the same answers and faults, translated.

Answers are deterministic (they depend only on the last user message, ``tokens`` and
``tail``) and identical in every mode, so a healthy answer and one assembled after a failover
compare equal as strings. A request picks its fault with the ``x-fake-mode`` header or with its
``model`` field (``drop``, ``drop:drop_after=5``, ``http:status=401``...); otherwise
``FakeOptions.mode`` applies. It is a raw ASGI app because benchmarks lean on it.

A partial answer is continued as the upstream it plays would: ``continuation`` says which
native continuations it honours (DeepSeek's ``prefix: true``, vLLM's
``continue_final_message``); one it does not honour is ignored and the answer starts over.
Asked in words to continue its own cut-off answer, it goes on but first restates the last
words it said, as models commonly do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import click
import orjson
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nobusy.testing.fake_anthropic import MessagesAPI
from nobusy.testing.fake_completions import text_conversation
from nobusy.testing.fake_server import SERVERS, FakeServer

__all__ = [
    "BUSY_MESSAGE",
    "CONTINUATIONS",
    "MODES",
    "FakeOptions",
    "answer_pieces",
    "answer_text",
    "create_fake_app",
    "fake_upstream_command",
    "reasoning_pieces",
    "reasoning_text",
    "run",
]

_ANSWERING_MODES = ("ok", "slow", "reasoning", "tool-call", "drop", "garbage", "error-in-stream")
MODES = (*_ANSWERING_MODES, "hang", "keepalive", "http503", "http429", "http")
CONTINUATIONS = ("all", "prefix", "vllm", "none")
BUSY_MESSAGE = "Server busy, please try again later"
_RESTATED_WORDS = 3
KEEPALIVE_INTERVAL = 0.2
SLOW_CHUNK_DELAY = 0.2
_FILLER = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")
_TOOL_CALL_ID = "call_fake_1"
_HTTP_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid parameter: temperature", "invalid_request_error", "invalid_value"),
    401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    429: ("Rate limit reached, please try again later", "rate_limit_error", "rate_limit_exceeded"),
    503: (BUSY_MESSAGE, "server_error", "server_is_overloaded"),
    529: ("Overloaded", "overloaded_error", "overloaded"),
}
_RETRY_AFTER_STATUSES = frozenset({429, 503, 529})
_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_TEXT_PATHS = frozenset({"/v1/completions", "/completions"})
_JSON = b"application/json"
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


@dataclasses.dataclass(frozen=True)
class FakeOptions:
    """How the fake behaves unless a request overrides it (``MODE:key=val`` in its model).

    ``delay`` holds back the first SSE event (headers go out at once, as with a real server
    that is still prefilling) or, without streaming, the whole response. ``fail_every=N``
    applies the mode to every Nth request only (the others are answered as ``ok``), and
    ``slow_every=N`` applies ``delay`` to every Nth request only; both count the requests of
    each mode string (model or header) separately. A negative ``retry_after`` sends no
    ``Retry-After`` header. With ``queue``, requests beyond ``capacity`` wait for a slot (as
    vLLM, llama.cpp and Ollama do) instead of being answered 503. ``continuation`` is the
    native continuation honoured: ``all`` (both), ``prefix``, ``vllm`` or ``none``.
    ``server`` (``vllm``, ``sglang``, ``llamacpp``) plays that local server
    (``testing.fake_server``): ``capacity`` running slots (default 4) and a queue behind them,
    a prefix cache of ``cache_blocks`` blocks, ``prefill_per_token`` seconds per prompt token
    not cached, and the server's ``/metrics``.
    """

    mode: str = "ok"
    capacity: int | None = None
    queue: bool = False
    delay: float = 0.0
    chunk_delay: float = 0.0
    tokens: int = 12
    drop_after: int = 3
    retry_after: int = 30
    status: int | None = None
    cut_after: int | None = None
    fail_every: int | None = None
    slow_every: int | None = None
    model_name: str = "fake-model"
    continuation: str = "all"
    server: str = ""
    prefill_per_token: float = 0.0002
    cache_blocks: int = 2048
    cached: int = 0  # prompt tokens reported as cache hits (prompt_tokens_details), at most all
    tail: str = ""  # said after the answer, e.g. an advert for the cross-check tests


# What `MODE:key=val` may override, and how each value is parsed (None defaults are ints).
_OVERRIDES: dict[str, Callable[[str], Any]] = {
    f.name: f.default.__class__ if isinstance(f.default, float | str) else int
    for f in dataclasses.fields(FakeOptions)
    if f.name != "mode"
}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict))
        return " ".join(t for t in parts if isinstance(t, str))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return " ".join(_text_of(message.get("content")).split())
    return ""


def _split(text: str, tokens: int) -> list[str]:
    # Exactly `tokens` non-empty word pieces: pad with filler, or fold the excess into the last.
    count = max(tokens, 1)
    words = text.split()
    words += [_FILLER[i % len(_FILLER)] for i in range(count - len(words))]
    if len(words) > count:
        words[count - 1 :] = [" ".join(words[count - 1 :])]
    return [w + " " for w in words[:-1]] + [words[-1]]


def answer_pieces(messages: list[dict[str, Any]], tokens: int = 12) -> list[str]:
    """The answer split into exactly ``tokens`` pieces, as streamed."""
    return _split(f"Fake answer to: {_last_user_text(messages)}.", tokens)


def answer_text(messages: list[dict[str, Any]], tokens: int = 12) -> str:
    """The deterministic full answer to a conversation, the same in every mode."""
    return "".join(answer_pieces(messages, tokens))


def reasoning_pieces(messages: list[dict[str, Any]], tokens: int = 12) -> list[str]:
    """The reasoning of mode ``reasoning`` split into exactly ``tokens`` pieces."""
    return _split(f"Let me think about: {_last_user_text(messages)}.", tokens)


def reasoning_text(messages: list[dict[str, Any]], tokens: int = 12) -> str:
    """The deterministic ``reasoning_content`` that mode ``reasoning`` sends first."""
    return "".join(reasoning_pieces(messages, tokens))


def _remainder(pieces: list[str], partial: str) -> list[str]:
    # Resume on the original word boundaries so a continued stream looks like the tail of
    # the uninterrupted one; a partial that is not ours gets the whole answer.
    if not "".join(pieces).startswith(partial):
        return pieces
    start = 0
    for i, piece in enumerate(pieces):
        end = start + len(piece)
        if end > len(partial):
            return [piece[len(partial) - start :], *pieces[i + 1 :]]
        start = end
    return []


def _error(message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


_NOT_FOUND = _error("Not found", "invalid_request_error", "not_found")
_INTERNAL_ERROR = _error("Internal error", "server_error", "internal")
_BAD_JSON = _error("Request body must be a JSON object", "invalid_request_error", "invalid_json")


@functools.lru_cache(maxsize=256)
def _parse_mode(spec: str, base: FakeOptions) -> tuple[str, FakeOptions] | None:
    name, _, args = spec.partition(":")
    if name not in MODES:
        return None
    changes: dict[str, Any] = {}
    for item in filter(None, args.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        convert = _OVERRIDES.get(key)
        if not sep or convert is None:
            raise ValueError(f"Unknown fake option {item!r}; known: {', '.join(_OVERRIDES)}")
        try:
            changes[key] = convert(value.strip())
        except ValueError:
            raise ValueError(f"Bad value for fake option {key!r}: {value!r}") from None
    options = dataclasses.replace(base, **changes)
    _check_every(options)
    return name, options


def _check_every(options: FakeOptions) -> None:
    if options.continuation not in CONTINUATIONS:
        known = ", ".join(CONTINUATIONS)
        raise ValueError(f"Unknown fake continuation {options.continuation!r}; known: {known}")
    for key in ("fail_every", "slow_every"):
        value = getattr(options, key)
        if value is not None and value < 1:
            raise ValueError(f"Fake option {key!r} must be at least 1, not {value}")


def _select_mode(header: str, model: str, base: FakeOptions) -> tuple[str, FakeOptions]:
    if header:
        chosen = _parse_mode(header, base)
        if chosen is None:  # an explicit header with a typo should fail loudly, not silently pass
            raise ValueError(f"Unknown x-fake-mode {header!r}; known: {', '.join(MODES)}")
        return chosen
    return _parse_mode(model, base) or (base.mode, base)


async def _read_body(receive: Receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    return body


async def _send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", _JSON), (b"content-length", b"%d" % len(body)), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _body(data: bytes, more: bool) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


class _Watch:
    """Sleeps that end early when the client goes away, so abandoned requests do not linger."""

    __slots__ = ("receive", "task")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.task: asyncio.Future[Message] | None = None

    async def gone_after(self, seconds: float | None) -> bool:
        if self.task is None:
            # The body is fully read by now, so receive() only returns on disconnect.
            self.task = asyncio.ensure_future(self.receive())
        done, _ = await asyncio.wait((self.task,), timeout=seconds)
        return bool(done)

    def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


def _quiet_drops(record: logging.LogRecord) -> bool:
    # Mode `drop` cuts responses on purpose; uvicorn would log each one as an app bug.
    return record.msg != "ASGI callable returned without completing response."


class _FakeApp:
    def __init__(self, options: FakeOptions) -> None:
        self.options = options
        self.ids = itertools.count(1)
        self.counts = dict.fromkeys(
            ("requests", "in_flight", "rejected", "max_in_flight", "queued"), 0
        )
        self.last = b"{}"
        capacity = options.capacity
        self.slots = asyncio.Semaphore(capacity) if options.queue and capacity else None
        self.turns: dict[str, int] = {}  # requests per mode string, for fail_every/slow_every
        ids = [options.model_name, *(m for m in MODES if m != options.model_name)]
        entry = {"object": "model", "created": 0, "owned_by": "nobusy-fake"}
        self.models = orjson.dumps({"object": "list", "data": [{"id": i, **entry} for i in ids]})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # returning at once tells uvicorn there is no lifespan to run
        path, method = scope["path"], scope["method"]
        if method == "POST" and (path in _CHAT_PATHS or path in _TEXT_PATHS):
            await self._generate(scope, receive, send, chat=path in _CHAT_PATHS)
        elif method == "POST" and path in ("/v1/embeddings", "/embeddings"):
            await self._embed(scope, receive, send)
        elif method == "GET" and path in ("/v1/models", "/models"):
            await _send_json(send, 200, self.models)
        elif method == "GET" and path == "/healthz":
            await _send_json(send, 200, b'{"status":"ok"}')
        elif method == "GET" and path == "/_fake/stats":
            await _send_json(send, 200, orjson.dumps(self.counts))
        elif method == "GET" and path == "/_fake/last":
            # What the last request carried: lets a drill see what reached the upstream.
            await _send_json(send, 200, self.last)
        elif method == "POST" and path == "/_fake/reset":
            counts = self.counts
            counts["requests"] = counts["rejected"] = 0
            counts["max_in_flight"] = counts["in_flight"]  # requests still running keep counting
            self.turns.clear()
            await _send_json(send, 200, orjson.dumps(counts))
        else:
            await _send_json(send, 404, _NOT_FOUND)

    async def _embed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Deterministic 8-dimensional vectors from each text's hash; the model picks a fault
        (``http503``, ``http:status=400``...) as for chat."""
        self.counts["requests"] += 1
        try:
            request = orjson.loads(await _read_body(receive))
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("input"), str | list):
            return await _send_json(send, 400, _BAD_JSON)
        model = str(request.get("model") or self.options.model_name)
        try:
            mode, opts = _select_mode("", model, self.options)
        except ValueError as exc:
            return await _send_json(send, 400, _error(str(exc), "invalid_request_error"))
        if mode in ("http503", "http429", "http"):
            status = {"http503": 503, "http429": 429}.get(mode, opts.status or 500)
            return await _http_error(send, status, opts, model)
        texts = request["input"] if isinstance(request["input"], list) else [request["input"]]
        data = []
        for i, text in enumerate(texts):
            digest = hashlib.sha256(str(text).encode()).digest()[:8]
            vector = [b / 255 - 0.5 for b in digest]
            norm = sum(v * v for v in vector) ** 0.5 or 1.0
            data.append(
                {"object": "embedding", "index": i, "embedding": [v / norm for v in vector]}
            )
        tokens = sum(len(str(t).split()) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        body = {"object": "list", "data": data, "model": model, "usage": usage}
        await _send_json(send, 200, orjson.dumps(body))

    async def _generate(self, scope: Scope, receive: Receive, send: Send, chat: bool) -> None:
        raw = await _read_body(receive)
        self.last = raw or b"{}"
        counts = self.counts
        counts["requests"] += 1
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            return await _send_json(send, 400, _BAD_JSON)
        capacity = self.options.capacity
        slots = self.slots
        if slots is not None:
            counts["queued"] += 1  # waiting for a slot, as a local server queues
            try:
                await slots.acquire()
            finally:
                counts["queued"] -= 1
        elif capacity is not None and counts["in_flight"] >= capacity:
            counts["rejected"] += 1
            return await _http_error(send, 503, self.options, "")
        counts["in_flight"] += 1
        counts["max_in_flight"] = max(counts["max_in_flight"], counts["in_flight"])
        watch = _Watch(receive)
        try:
            await self._answer(request, scope, watch, send, chat)
        finally:
            counts["in_flight"] -= 1
            watch.close()
            if slots is not None:
                slots.release()

    async def _answer(
        self, request: dict[str, Any], scope: Scope, watch: _Watch, send: Send, chat: bool
    ) -> None:
        model = request.get("model")
        model = model if isinstance(model, str) and model else self.options.model_name
        try:
            header = next((v for k, v in scope["headers"] if k == b"x-fake-mode"), b"")
            spec = header.decode("latin-1")
            mode, opts = _select_mode(spec, model, self.options)
        except ValueError as exc:
            return await _send_json(
                send, 400, _error(str(exc), "invalid_request_error", None, "model")
            )
        if opts.fail_every is not None or opts.slow_every is not None:
            key = spec or model
            turn = self.turns[key] = self.turns.get(key, 0) + 1
            if opts.fail_every is not None and turn % opts.fail_every:
                mode = "ok"
            if opts.slow_every is not None and turn % opts.slow_every:
                opts = dataclasses.replace(opts, delay=0.0)
        if mode in ("http503", "http429", "http"):
            status = {"http503": 503, "http429": 429}.get(mode, opts.status or 500)
            return await _http_error(send, status, opts, model)
        stream = request.get("stream") is True
        if mode == "hang":
            await watch.gone_after(None)
            return
        if mode == "keepalive":
            return await _keepalive(send, watch, opts, stream)

        messages, partial, restate = _conversation(request, chat, opts.continuation, opts.tokens)
        content = answer_pieces(messages, opts.tokens)
        if opts.tail:
            content[-1] += " " + opts.tail
        if partial is not None:
            content = _remainder(content, partial)
            if restate:
                content.insert(0, " ".join(partial.split()[-_RESTATED_WORDS:]))
        reasoning: list[str] = []
        if chat and mode == "reasoning" and partial is None:  # a continuation already thought
            reasoning = reasoning_pieces(messages, opts.tokens)
        tool = _tool_call(request, messages) if chat and mode == "tool-call" else None
        sent = len(tool[1]) if tool else len(reasoning) + len(content)
        prompt_tokens = sum(len(_text_of(m.get("content")).split()) for m in messages)
        if partial is not None:
            prompt_tokens += len(partial.split())
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": sent}
        usage["total_tokens"] = prompt_tokens + sent
        if opts.cached:
            usage["prompt_tokens_details"] = {"cached_tokens": min(opts.cached, prompt_tokens)}
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": len(reasoning)}
        gap = opts.chunk_delay or (SLOW_CHUNK_DELAY if mode == "slow" else 0.0)
        rid = f"chatcmpl-fake-{next(self.ids)}" if chat else f"cmpl-fake-{next(self.ids)}"
        created = int(time.time())

        if not stream:
            if mode == "garbage":
                body = b'{"choices": ['
            elif mode == "error-in-stream":
                body = _INTERNAL_ERROR
            else:
                obj = "chat.completion" if chat else "text_completion"
                choice = (
                    _message_choice(content, reasoning, tool) if chat else _text_choice(content)
                )
                body = orjson.dumps(
                    {"id": rid, "object": obj, "created": created, "model": model}
                    | {"choices": [choice], "usage": usage}
                )
            wait = opts.delay + gap * max(sent - 1, 0)
            if wait > 0 and await watch.gone_after(wait):
                return
            if mode != "drop":
                return await _send_json(send, 200, body)
            # Announce the full length, then stop halfway: the client sees a truncated body.
            headers = [(b"content-type", _JSON), (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send(_body(body[: len(body) // 2], True))
            return

        # Every chunk shares this opening; only the choices are serialised per chunk.
        kind = "chat.completion.chunk" if chat else "text_completion"
        ident = orjson.dumps({"id": rid, "object": kind, "created": created, "model": model})
        prefix = b"data: " + ident[:-1] + b',"choices":'

        def event(choice: dict[str, Any]) -> bytes:
            return prefix + orjson.dumps([choice]) + b"}\n\n"

        def delta(d: dict[str, Any], finish: str | None = None) -> bytes:
            return event({"index": 0, "delta": d, "finish_reason": finish})

        if not chat:
            head: list[bytes] = []
            units = [
                event({"index": 0, "text": p, "logprobs": None, "finish_reason": None})
                for p in content
            ]
            finish = event({"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"})
        elif tool:
            name, fragments = tool
            call = {"index": 0, "id": _TOOL_CALL_ID, "type": "function"}
            call["function"] = {"name": name, "arguments": ""}
            head = [delta({"role": "assistant", "content": None}), delta({"tool_calls": [call]})]
            units = [
                delta({"tool_calls": [{"index": 0, "function": {"arguments": f}}]})
                for f in fragments
            ]
            finish = delta({}, "tool_calls")
        else:
            head = [delta({"role": "assistant", "content": ""})]
            units = [delta({"content": None, "reasoning_content": r}) for r in reasoning]
            units += [delta({"content": p}) for p in content]
            finish = delta({}, "stop")

        complete = True
        if opts.cut_after is not None:  # any mode: cut the connection after that many units
            units, tail, complete = units[: max(opts.cut_after, 0)], b"", False
        elif mode == "drop":
            units, tail, complete = units[: max(opts.drop_after, 0)], b"", False
        elif mode == "garbage":
            units, tail = units[:1], b"data: {not json!!\n\n"
        elif mode == "error-in-stream":
            units, tail = units[:2], b"data: " + _INTERNAL_ERROR + b"\n\n"
        else:
            options = request.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage") is True:
                finish += prefix + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n"
            tail = finish + b"data: [DONE]\n\n"
        await _stream(send, watch, opts.delay, gap, head, units, tail, complete)


def _conversation(
    request: dict[str, Any], chat: bool, honoured: str, tokens: int
) -> tuple[list[dict[str, Any]], str | None, bool]:
    """The messages the answer is computed from, the partial answer to continue if any, and
    whether it was asked in words (so the continuation restates the partial's last words)."""
    if not chat:  # a text completion: nobusy.testing.fake_completions
        return text_conversation(request, tokens, answer_text)
    raw = request.get("messages")
    messages = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
    last = messages[-1] if messages else {}
    if last.get("role") == "assistant":
        # An ignored continuation field leaves a conversation ending with the assistant: a
        # model answers it afresh, from the start.
        prefix = last.get("prefix") is True and honoured in ("all", "prefix")
        final = request.get("continue_final_message") is True and honoured in ("all", "vllm")
        if prefix or final:
            return messages[:-1], _text_of(last.get("content")), False
        return messages, None, False
    if len(messages) >= 3 and messages[-2].get("role") == "assistant":
        asked = _text_of(last.get("content")).lower()
        partial = _text_of(messages[-2].get("content"))
        earlier = messages[:-2]
        full = answer_text(earlier, tokens)
        if "continue" in asked and partial and full.startswith(partial) and full != partial:
            return earlier, partial, True
    return messages, None, False


def _tool_call(
    request: dict[str, Any], messages: list[dict[str, Any]]
) -> tuple[str, list[str]] | None:
    tools = request.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    function = tools[0].get("function") if isinstance(tools[0], dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    arguments = orjson.dumps({"query": _last_user_text(messages)}).decode()
    step = -(-len(arguments) // 4)
    fragments = [arguments[i : i + step] for i in range(0, len(arguments), step)]
    return (name if isinstance(name, str) else "tool"), fragments


def _message_choice(
    content: list[str], reasoning: list[str], tool: tuple[str, list[str]] | None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None if tool else "".join(content)}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if tool:
        function = {"name": tool[0], "arguments": "".join(tool[1])}
        message["tool_calls"] = [{"id": _TOOL_CALL_ID, "type": "function", "function": function}]
    finish = "tool_calls" if tool else "stop"
    return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}


def _text_choice(content: list[str]) -> dict[str, Any]:
    return {"index": 0, "text": "".join(content), "logprobs": None, "finish_reason": "stop"}


async def _stream(
    send: Send,
    watch: _Watch,
    delay: float,
    gap: float,
    head: list[bytes],
    units: list[bytes],
    tail: bytes,
    complete: bool,
) -> None:
    # Returning with more_body still True makes uvicorn close the socket mid-body: a real cut.
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    if delay > 0 and await watch.gone_after(delay):
        return
    if gap <= 0:
        # One write for the whole stream: clients must cope anyway, and benchmarks need speed.
        return await send(_body(b"".join([*head, *units, tail]), not complete))
    await send(_body(b"".join(head + units[:1]), True))
    for unit in units[1:]:
        if await watch.gone_after(gap):
            return
        await send(_body(unit, True))
    await send(_body(tail, not complete))


async def _keepalive(send: Send, watch: _Watch, opts: FakeOptions, stream: bool) -> None:
    if opts.delay > 0 and await watch.gone_after(opts.delay):
        return
    # Non-stream: DeepSeek holds the request with blank lines before the JSON body.
    headers = _SSE_HEADERS if stream else [(b"content-type", _JSON)]
    beat = b": keep-alive\n\n" if stream else b"\n"
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    while True:
        await send(_body(beat, True))
        if await watch.gone_after(KEEPALIVE_INTERVAL):
            return


async def _http_error(send: Send, status: int, opts: FakeOptions, model: str) -> None:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    message, kind, code = _HTTP_ERRORS.get(status, (f"Fake upstream error {status}", kind, None))
    param = None
    if status == 400 and "context" in model:
        message = "This model's maximum context length is 10 tokens"
        code, param = "context_length_exceeded", "messages"
    retry: list[tuple[bytes, bytes]] = []
    if status in _RETRY_AFTER_STATUSES and opts.retry_after >= 0:
        retry = [(b"retry-after", b"%d" % opts.retry_after)]
    await _send_json(send, status, _error(message, kind, code, param), retry)


def create_fake_app(options: FakeOptions) -> ASGIApp:
    """A fresh fake upstream (with its own counters) as a plain ASGI callable."""
    if options.mode not in MODES:
        raise ValueError(f"Unknown fake mode {options.mode!r}; known: {', '.join(MODES)}")
    _check_every(options)
    logging.getLogger("uvicorn.error").addFilter(_quiet_drops)
    # Anthropic's /v1/messages in front of the chat side: the same faults in its format.
    app: ASGIApp = MessagesAPI(_FakeApp(options))
    if options.server:
        app = FakeServer(
            app,
            options.server,
            options.model_name,
            options.capacity or 4,
            options.prefill_per_token,
            options.cache_blocks,
        )
    return app


def run(options: FakeOptions, host: str, port: int) -> None:
    """Serve the fake upstream until interrupted."""
    uvicorn.run(
        create_fake_app(options),
        host=host,
        port=port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


@click.command("fake-upstream")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=9100, show_default=True, help="TCP port to listen on.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="ok",
    show_default=True,
    help="Default mode; a request may pick another with x-fake-mode or its model name.",
)
@click.option("--capacity", type=int, help="Concurrent requests allowed before answering 503.")
@click.option(
    "--queue",
    is_flag=True,
    help="Beyond --capacity, make requests wait for a slot (as local servers do), not 503.",
)
@click.option("--delay", default=0.0, help="Seconds to wait before the first byte of an answer.")
@click.option("--chunk-delay", default=0.0, help="Seconds to wait between streamed chunks.")
@click.option("--tokens", default=12, show_default=True, help="Content chunks per answer.")
@click.option("--drop-after", default=3, show_default=True, help="Chunks sent before a drop.")
@click.option(
    "--retry-after",
    default=30,
    show_default=True,
    help="Retry-After for 429/503 (negative: no header).",
)
@click.option("--status", type=int, help="HTTP status that mode 'http' answers with.")
@click.option("--cut-after", type=int, help="In any mode, cut the stream after N chunks.")
@click.option(
    "--continuation",
    type=click.Choice(CONTINUATIONS),
    default="all",
    show_default=True,
    help="Native continuations honoured (prefix: true, continue_final_message); others restart.",
)
@click.option(
    "--fail-every",
    type=click.IntRange(min=1),
    help="Apply the mode to every Nth request only; answer the others as 'ok'.",
)
@click.option(
    "--slow-every",
    type=click.IntRange(min=1),
    help="Apply --delay to every Nth request only.",
)
@click.option(
    "--server",
    type=click.Choice(("", *SERVERS)),
    default="",
    help="Play a local inference server: slots (--capacity), a queue, a prefix cache, /metrics.",
)
@click.option(
    "--prefill-per-token",
    default=0.0002,
    show_default=True,
    help="With --server: seconds of prefill per prompt token not in the prefix cache.",
)
@click.option(
    "--cache-blocks",
    default=2048,
    show_default=True,
    help="With --server: prefix-cache size in 64-character blocks.",
)
@click.option("--model-name", default="fake-model", show_default=True, help="Model served.")
def fake_upstream_command(host: str, port: int, **options: Any) -> None:
    """Run a fake OpenAI-compatible upstream (and Messages API) that injects faults on demand."""
    click.echo(f"nobusy fake upstream on http://{host}:{port}/v1 (mode: {options['mode']})")
    run(FakeOptions(**options), host, port)
