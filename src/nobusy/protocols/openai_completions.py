"""OpenAI's legacy completions, ``/v1/completions``: a prompt continued, or a middle filled in.

The internal request of a text completion is the completions body itself: a ``prompt`` (and
for fill-in-the-middle a ``suffix``) where chat has ``messages`` (``upstreams.base
.is_text_completion``); upstream kinds that serve it (``completions: true``) answer it with
the same internal chunks as chat, its text as ``delta.content``. So the guard, PII masking,
routing, failover, continuation (the text sent appended to the prompt), usage and audit are
chat's. Out, the chunks become ``text_completion`` objects.

What nobusy accepts of the legacy API: ``prompt`` as one string (or a list of exactly one;
several prompts are several answers, and nobusy returns one choice per request, like
``n: 1``); token-id prompts are refused (no guard or PII check could read them), and so are
``logprobs`` and ``best_of`` above 1 (the internal answer carries neither). ``echo`` is done by
nobusy itself: the prompt is put before the answer's text (never sent upstream, so it is not
counted twice).
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from nobusy.errors import InvalidRequest
from nobusy.routing.relay import DONE, Encoder
from nobusy.schema import ChatRequest, Message, StreamOptions, invalid_request, parse_json_object
from nobusy.store.usage import UsageRecord
from nobusy.upstreams.base import Chunk

__all__ = [
    "CompletionEvents",
    "CompletionRequest",
    "OpenAICompletions",
    "parse_completion_request",
]


class CompletionRequest(msgspec.Struct):
    """A ``/v1/completions`` body as nobusy reads it (also its OpenAPI schema)."""

    model: str
    prompt: str | list[Any]
    suffix: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    seed: int | None = None
    user: str | None = None


def parse_completion_request(raw: bytes) -> tuple[ChatRequest, dict[str, Any], str]:
    """(internal typed view, body that goes upstream, text to echo) of a completions body, or
    InvalidRequest naming the field to fix."""
    body = parse_json_object(raw, "a JSON object with `model` and `prompt`")
    try:
        request = msgspec.convert(body, CompletionRequest)
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None
    prompt = _prompt(request.prompt)
    _check(request)
    out = dict(body)
    out["prompt"] = prompt
    out.pop("echo", None)  # nobusy echoes itself: the upstream would count the prompt again
    if not request.suffix:
        out.pop("suffix", None)  # no suffix, or an empty one: a plain completion
    for name in ("logprobs", "best_of", "n"):
        if out.get(name) is None:
            out.pop(name, None)
    chat = ChatRequest(
        model=request.model,
        messages=[Message(role="user", content=prompt)],
        stream=request.stream,
        stream_options=request.stream_options,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        seed=request.seed,
        user=request.user,
    )
    return chat, out, prompt if request.echo else ""


def _prompt(value: str | list[Any]) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        raise InvalidRequest(
            f"'prompt' has {len(value)} prompts: nobusy returns one choice per request; send "
            "one prompt per request.",
            param="prompt",
        )
    if isinstance(value, list) and value and all(isinstance(p, int | list) for p in value):
        raise InvalidRequest(
            "'prompt' as token ids is not supported: send the prompt as text.", param="prompt"
        )
    raise InvalidRequest("'prompt' must be a string (or a list of one string).", param="prompt")


def _check(req: CompletionRequest) -> None:
    if not req.model:
        raise InvalidRequest("'model' must not be empty.", param="model")
    if req.n is not None and req.n != 1:
        raise InvalidRequest(
            f"n={req.n} is not supported: nobusy returns one choice per request; "
            "send n=1 or several requests.",
            param="n",
        )
    if req.best_of is not None and req.best_of != 1:
        raise InvalidRequest(
            "'best_of' is not supported: nobusy returns the one answer it streams.",
            param="best_of",
        )
    if req.logprobs is not None:
        raise InvalidRequest(
            "'logprobs' is not supported on /v1/completions through nobusy.", param="logprobs"
        )
    if req.echo and req.suffix:
        raise InvalidRequest("'echo' cannot be used with 'suffix'.", param="echo")
    if req.max_tokens is not None and req.max_tokens < 1:
        raise InvalidRequest("'max_tokens' must be at least 1.", param="max_tokens")
    if req.temperature is not None and not 0 <= req.temperature <= 2:
        raise InvalidRequest("'temperature' must be between 0 and 2.", param="temperature")
    if req.top_p is not None and not 0 <= req.top_p <= 1:
        raise InvalidRequest("'top_p' must be between 0 and 1.", param="top_p")


class OpenAICompletions:
    """The ``ClientProtocol`` of one ``/v1/completions`` request: its parser (which notes the
    text to echo) and its way out, as ``text_completion`` objects."""

    __slots__ = ("echo",)

    def __init__(self) -> None:
        self.echo = ""

    def parse(self, raw: bytes) -> tuple[ChatRequest, dict[str, Any]]:
        chat, body, self.echo = parse_completion_request(raw)
        return chat, body

    def encoder(self, chat: ChatRequest, record: UsageRecord) -> Encoder:
        return CompletionEvents(self.echo)

    def render(self, completion: dict[str, Any], chat: ChatRequest) -> dict[str, Any]:
        choice = completion["choices"][0]
        text = self.echo + (choice["message"].get("content") or "")
        return {
            "id": _completion_id(completion["id"]),
            "object": "text_completion",
            "created": completion["created"],
            "model": completion["model"],
            "choices": [
                {
                    "text": text,
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": choice["finish_reason"],
                }
            ],
            "usage": completion["usage"],
        }


class CompletionEvents:
    """The internal chunks as a completions stream: ``text_completion`` objects in ``data:``
    lines, the usage chunk when asked for, ``data: [DONE]``."""

    __slots__ = ("echo",)

    def __init__(self, echo: str = "") -> None:
        self.echo = echo

    def start(self) -> bytes:
        return b""

    def chunk(self, chunk: Chunk) -> bytes:
        choices = []
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content") or ""
            finish = choice.get("finish_reason")
            if self.echo and (text or finish):
                text, self.echo = self.echo + text, ""
            if text or finish:
                choice_out = {"text": text, "index": 0, "logprobs": None}
                choices.append({**choice_out, "finish_reason": finish})
        usage = chunk.get("usage")
        if not choices and not usage:
            return b""  # a role or reasoning chunk: nothing a completions client reads
        out = {
            "id": _completion_id(chunk["id"]),
            "object": "text_completion",
            "created": chunk["created"],
            "model": chunk["model"],
            "choices": choices,
        }
        if usage:
            out["usage"] = usage
        return b"data: " + orjson.dumps(out) + b"\n\n"

    def note(self, text: str) -> bytes:
        return b": " + text.encode() + b"\n\n"

    def end(self) -> bytes:
        return DONE

    def error(self, status: int, body: dict[str, Any]) -> bytes:
        # The OpenAI SDKs raise an event with an `error` member as APIError.
        return b"data: " + orjson.dumps(body) + b"\n\n"


def _completion_id(chat_id: str) -> str:
    # The relay names every answer chatcmpl-<request id>; a completion is cmpl-<request id>.
    return "cmpl-" + chat_id.removeprefix("chatcmpl-")
