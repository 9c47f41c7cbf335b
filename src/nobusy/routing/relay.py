"""From an upstream's chunks to what the client asked for: an SSE stream or one completion.

The stream's wire format is the client protocol's ``Encoder`` (OpenAI's ``data:`` lines by
default; ``nobusy.protocols`` has the others); the whole answer is one ``chat.completion``
that a protocol renders in its own shape.

Both paths rewrite each chunk's ``id`` and ``model`` (so an answer keeps one identity whichever
upstream produced it), count usage from the upstream's usage chunk, and hide that chunk when
the client did not ask for it. The usage record is closed in ``finally``: a client that leaves
mid-stream is still logged and billed. An error after the headers becomes an error event, a
bug included (its traceback goes to the log only).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from nobusy.errors import NobusyError
from nobusy.message import MessageBuilder
from nobusy.responses import internal_error_body
from nobusy.schema import ChatRequest
from nobusy.store.ledger import Transcript
from nobusy.store.usage import UsageRecord
from nobusy.upstreams.base import Chunk

__all__ = [
    "ChunkRewriter",
    "Chunked",
    "Encoder",
    "OpenAIEvents",
    "collect",
    "internal_error_event",
    "sse_events",
]

DONE = b"data: [DONE]\n\n"

log = logging.getLogger("nobusy")


class ChunkRewriter:
    """Rewrites each chunk of one answer for the client, counting its usage into the record;
    shared by the streaming and the collecting path."""

    __slots__ = ("alias", "completion_id", "created", "include_usage", "record", "saw_usage")

    def __init__(self, request: ChatRequest, record: UsageRecord) -> None:
        self.alias = request.model
        self.completion_id = f"chatcmpl-{record.request_id}"
        self.created = int(record.started)
        self.include_usage = request.include_usage
        self.record = record
        self.saw_usage = False

    def rewrite(self, chunk: Chunk) -> Chunk | None:
        """Rewrite one chunk for the client; None when the client should not see it."""
        chunk["id"] = self.completion_id
        chunk["model"] = self.alias
        chunk["created"] = self.created
        usage = chunk.get("usage")
        if usage:
            self.saw_usage = True
            self.record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.record.completion_tokens = int(usage.get("completion_tokens") or 0)
            if not self.include_usage:
                if not chunk.get("choices"):
                    return None
                del chunk["usage"]
        elif not self.saw_usage:
            # Upstreams that send no usage get one completion token counted per content chunk,
            # which is how llama.cpp, vLLM and most hosted APIs stream.
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("reasoning_content"):
                    self.record.completion_tokens += 1
        return chunk


class Chunked(Protocol):
    """What the relay reads of an answer: its chunks (an ``Answer``, or a kept one replayed)."""

    chunks: AsyncIterator[Chunk]


class Encoder(Protocol):
    """A client protocol's stream format: the rewritten chunks of one answer as its events.

    ``nobusy.protocols`` has one per client protocol; the relay owns everything else (usage,
    notes, the audit capture, closing the books, errors after the headers)."""

    def start(self) -> bytes:
        """What opens the stream, before the first chunk (may be empty)."""
        ...

    def chunk(self, chunk: Chunk) -> bytes:
        """One rewritten chunk (a usage chunk included when the request counts usage)."""
        ...

    def note(self, text: str) -> bytes:
        """A nobusy note (continuation, restart) the client's SDK ignores."""
        ...

    def end(self) -> bytes:
        """What closes a complete answer, once its usage is known."""
        ...

    def error(self, status: int, body: dict[str, Any]) -> bytes:
        """An error event after the headers: the HTTP status the error would have had and
        its body in OpenAI's shape (``nobusy.errors.error_body``)."""
        ...


class OpenAIEvents:
    """OpenAI's chat-completion stream: ``data:`` lines, comments, ``data: [DONE]``."""

    def start(self) -> bytes:
        return b""

    def chunk(self, chunk: Chunk) -> bytes:
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def note(self, text: str) -> bytes:
        return b": " + text.encode() + b"\n\n"

    def end(self) -> bytes:
        return DONE

    def error(self, status: int, body: dict[str, Any]) -> bytes:
        # The OpenAI SDKs raise an event with an `error` member as APIError.
        return b"data: " + orjson.dumps(body) + b"\n\n"


async def sse_events(
    answer: Chunked,
    request: ChatRequest,
    record: UsageRecord,
    close: Callable[[], None],
    capture: Transcript | None = None,
    encoder: Encoder | None = None,
) -> AsyncIterator[bytes]:
    """The answer as SSE events (OpenAI's unless ``encoder`` says otherwise); an error after
    the first byte becomes an error event.

    With ``capture``, what the client receives (content, reasoning, tool calls) is also
    assembled there, for the audit log."""
    rewriter = ChunkRewriter(request, record)
    encode = encoder or OpenAIEvents()
    record.outcome = "client_gone"
    try:
        opening = encode.start()
        if opening:
            yield opening
        async for chunk in answer.chunks:
            if "nobusy_note" in chunk:
                record.notes.append(chunk["nobusy_note"])
                yield encode.note(chunk["nobusy_note"])
                continue
            out = rewriter.rewrite(chunk)
            if out is not None:
                if capture is not None:
                    for choice in out.get("choices") or ():
                        capture.answer.add(choice)
                part = encode.chunk(out)
                if part:
                    yield part
        record.outcome = "ok"
        # Books closed before the end: a client that stops reading at [DONE] (or
        # message_stop) has an answer whose usage row is already on its way to disk
        # (close() is idempotent).
        close()
        yield encode.end()
    except NobusyError as exc:
        # Headers are gone: the only honest signal left is an error event, which the
        # SDKs raise as an API error.
        record.outcome = exc.code or "error"
        if exc.public_message != exc.message:  # the client gets the summary, the log the rest
            log.warning("request %s: %s", record.request_id, exc.message)
        yield encode.error(exc.status_code, exc.body())
    except Exception as exc:
        record.outcome = "internal_error"
        yield encode.error(500, internal_error_body(record.request_id, exc))
    finally:
        await _aclose(answer.chunks)
        close()


def internal_error_event(request_id: str, exc: Exception, encoder: Encoder | None = None) -> bytes:
    """A bug after the headers: the log gets the traceback, the client an error event."""
    return (encoder or OpenAIEvents()).error(500, internal_error_body(request_id, exc))


async def collect(
    answer: Chunked,
    request: ChatRequest,
    record: UsageRecord,
    capture: Transcript | None = None,
) -> dict[str, Any]:
    """Assemble the whole answer into one ``chat.completion`` object (also into ``capture``)."""
    rewriter = ChunkRewriter(request, record)
    built = capture.answer if capture is not None else MessageBuilder()
    try:
        async for chunk in answer.chunks:
            if "nobusy_note" in chunk:
                record.notes.append(chunk["nobusy_note"])
                continue
            rewriter.rewrite(chunk)
            for choice in chunk.get("choices") or ():
                built.add(choice)
    finally:
        await _aclose(answer.chunks)
    prompt, completion = record.prompt_tokens, record.completion_tokens
    first: dict[str, Any] = {
        "index": 0,
        "message": built.message(),
        "finish_reason": built.finish_reason or "stop",
        "logprobs": None,
    }
    if built.stop_reason is not None:  # as vLLM reports it: the stop sequence matched
        first["stop_reason"] = built.stop_reason
    return {
        "id": rewriter.completion_id,
        "object": "chat.completion",
        "created": rewriter.created,
        "model": rewriter.alias,
        "choices": [first],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


async def _aclose(chunks: AsyncIterator[Chunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
