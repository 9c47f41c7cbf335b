"""The answer as the client receives it: one seamless stream, even when its upstream fails.

After the first token, a failure (a dropped connection, an error event, a gap longer than
``idle_timeout``) does not reach the client. The stream continues on the next route with the
partial answer (``routing.continuation``), drops what the client already has, and carries on.
Along the way it:

- buffers tool-call deltas until each call is complete, so a call cut in half is restarted
  on the next route and the client never sees broken JSON;
- restarts reasoning cut mid-thought on the next route (the restart is announced in an SSE
  comment; identical text already sent is not repeated);
- sums usage over every attempt into the one usage chunk the client sees;
- emits notes (``{"nobusy_note": ...}``) that the relay writes as SSE comments, which OpenAI
  SDKs ignore and the web console shows.

The stream asks its ``Walker`` for the next attempt (``routing.walker``); the walker owns the
plan, the failures and the attempts, so the stream holds only what the client has been sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from nobusy.errors import UpstreamError, UpstreamTimeout
from nobusy.routing.continuation import Joiner, Skipper, continuation_body
from nobusy.routing.idle import IdleTimer
from nobusy.routing.walker import Walker
from nobusy.settings import Route
from nobusy.upstreams.base import Chunk, has_token

__all__ = ["Answer", "AnswerStream", "cached_tokens", "note", "open_answer"]

log = logging.getLogger("nobusy.failover")


def note(text: str) -> Chunk:
    return {"nobusy_note": text}


@dataclass(slots=True)
class Answer:
    """An answer whose first token has arrived: where it comes from, and all its chunks."""

    route: Route  # the route that spoke first
    chunks: AsyncIterator[Chunk]
    first_token_at: float
    walker: Walker
    overflow: bool = False

    @property
    def upstream(self) -> str:
        return f"{self.route} (overflow)" if self.overflow else str(self.route)

    @property
    def failures(self) -> list[UpstreamError]:
        return self.walker.failures

    def tried(self) -> list[str]:
        """Upstreams attempted so far, in order, ending with the one answering now."""
        return self.walker.tried()


async def open_answer(walker: Walker) -> Answer:
    """The walker's first attempt to speak, relayed with failover as one answer."""
    attempt = await walker.first_attempt()
    assert attempt.first_token_at is not None
    stream = AnswerStream(walker)
    return Answer(
        attempt.route,
        stream.chunks(),
        attempt.first_token_at,
        walker,
        overflow=walker.overflow and attempt.route == walker.reserved,
    )


class AnswerStream:
    """Relays one attempt after another as a single answer."""

    def __init__(self, walker: Walker) -> None:
        self.walker = walker
        # What the client has, as pieces (joined only when a continuation needs the text).
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self.tools: list[Chunk] = []  # tool-call deltas held until the calls are complete
        self.continuing = False  # after a failover: chunks need skipping and rewriting
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.saw_usage = False
        self.cached_tokens = 0  # cache hits the upstreams reported (priced apart: money/)
        self.attempt_pieces = 0
        self.attempt_usage = False
        self.attempt_tokens = 0  # what the answering attempt's upstream reported using
        self.role_sent = False
        self.joiner: Joiner | None = None
        self.reasoning_skip: Skipper | None = None
        self.how = ""  # how the current continuation was made, for the note

    async def chunks(self) -> AsyncIterator[Chunk]:
        walker = self.walker
        attempt = walker.attempt
        assert attempt is not None
        try:
            while True:
                try:
                    for chunk in attempt.prefix:  # read while waiting for the first token
                        for out in self._process(chunk):
                            yield out
                    attempt.prefix = []
                    idle = attempt.settings.idle_timeout
                    iterator = attempt.iterator
                    # The deadline covers only the wait for the upstream, never the time the
                    # client takes to read what was yielded; and only a token restarts it, so
                    # a stream of empty chunks times out like silence does.
                    timer = IdleTimer(idle)
                    try:
                        while True:
                            timer.wait()
                            try:
                                chunk = await anext(iterator)
                            except StopAsyncIteration:
                                break
                            except asyncio.CancelledError:
                                if timer.timed_out():
                                    raise UpstreamTimeout(
                                        f"timed out mid-answer after {idle:g} s without a token",
                                        upstream=attempt.route.upstream,
                                    ) from None
                                raise
                            timer.got(has_token(chunk))
                            for out in self._process(chunk):
                                yield out
                    finally:
                        timer.cancel()
                    held = self._held_content()  # the stream ended without a finish chunk
                    if held:
                        yield _content_chunk(held)
                    await attempt.succeed(self.attempt_tokens if self.attempt_usage else None)
                    if self.saw_usage:
                        yield _usage_chunk(self.usage, self.cached_tokens)
                    return
                except UpstreamError as exc:
                    await attempt.fail(exc)
                    self._count_lost_usage()
                    if not exc.retryable:
                        raise
                    walker.failures.append(exc)
                    log.warning(
                        "request %s: %s failed mid-answer: %s; continuing on the next route",
                        walker.request_id, attempt.route, exc.message,
                    )  # fmt: skip
                    self.tools = []  # a half-made tool call is made again from the start
                    attempt = await walker.next_attempt(self._continuation_body)
                    log.warning(
                        "request %s: continuing the answer on %s", walker.request_id, attempt.route
                    )
                    # Worded by what is known of the method (continuation.Method.how): only a
                    # continuation seen to work is called seamless.
                    yield note(
                        f"nobusy: {exc.upstream} failed mid-answer ({exc.code}); "
                        f"continuing on {attempt.route}: {self.how}"
                    )
        finally:
            if walker.attempt is not None:
                await walker.attempt.cancel()  # no-op when it already ended

    def _process(self, chunk: Chunk) -> list[Chunk]:
        usage = chunk.get("usage")
        if usage:
            self.saw_usage = self.attempt_usage = True
            self.usage["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            self.usage["completion_tokens"] += int(usage.get("completion_tokens") or 0)
            self.cached_tokens += cached_tokens(usage)
            self.attempt_tokens += int(usage.get("prompt_tokens") or 0)
            self.attempt_tokens += int(usage.get("completion_tokens") or 0)
            if not chunk.get("choices"):
                return []
            chunk = {k: v for k, v in chunk.items() if k != "usage"}
        if self.continuing or self.tools:
            return self._process_slowly(chunk)
        # The first attempt, with no tool call under way: relay the chunk as it is and only
        # take note of what the client now has. Nearly every chunk takes this path.
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if not delta:
                continue
            if delta.get("tool_calls"):
                return self._process_slowly(chunk)
            content = delta.get("content")
            if content:
                self._content.append(content)
                self.attempt_pieces += 1
            thought = delta.get("reasoning_content")
            if thought:
                self._reasoning.append(thought)
                self.attempt_pieces += 1
            if "role" in delta:
                self.role_sent = True
        return [chunk]

    def _process_slowly(self, chunk: Chunk) -> list[Chunk]:
        out: list[Chunk] = []
        for choice in chunk.get("choices") or ():
            delta = dict(choice.get("delta") or {})
            if delta.pop("role", None) and not self.role_sent:
                self.role_sent = True
                delta["role"] = "assistant"
            content = delta.pop("content", None)
            if content:
                self.attempt_pieces += 1
                content = self._new_content(content)
                if content:
                    self._content.append(content)
                    delta["content"] = content
            thought = delta.pop("reasoning_content", None)
            if thought:
                self.attempt_pieces += 1
                for piece in self._new_reasoning(thought):
                    if isinstance(piece, dict):
                        out.append(piece)
                    else:
                        self._reasoning.append(piece)
                        delta["reasoning_content"] = delta.get("reasoning_content", "") + piece
            calls = delta.pop("tool_calls", None)
            if calls:
                self.tools.append(_choice_chunk(choice, {"tool_calls": calls}, None))
            finish = choice.get("finish_reason")
            if finish:
                out.extend(self.tools)
                self.tools = []
                held = self._held_content()  # it belongs before the finish, not after
                if held:
                    delta["content"] = delta.get("content", "") + held
            if delta or finish:
                out.append(_choice_chunk(choice, delta, finish))
        return out

    def _new_content(self, text: str) -> str:
        return self.joiner.feed(text) if self.joiner is not None else text

    def _held_content(self) -> str:
        """What the trimmer still holds of a continuation shorter than its window, released
        through the skipper like any other new content (the client has the whitespace)."""
        text = self.joiner.flush() if self.joiner is not None else ""
        if text:
            self._content.append(text)
        return text

    def _new_reasoning(self, text: str) -> list[str | Chunk]:
        if self._content:
            return []  # continuing an answer: its reasoning is over
        skip = self.reasoning_skip
        if skip is None:
            return [text]
        diverged_before = skip.diverged
        rest = skip.feed(text)
        if skip.diverged and not diverged_before:
            # The new route thinks differently: restart its reasoning in full, visibly.
            assert self.walker.attempt is not None
            route = self.walker.attempt.route
            return [note(f"nobusy: reasoning restarted on {route}"), "\n\n" + skip.matched + rest]
        return [rest] if rest else []

    def _count_lost_usage(self) -> None:
        # An attempt cut off before its usage chunk still cost completion tokens; count the
        # pieces it sent, one token each (how llama.cpp, vLLM and most APIs stream).
        if not self.attempt_usage and self.attempt_pieces:
            self.saw_usage = True
            self.usage["completion_tokens"] += self.attempt_pieces
        self.attempt_pieces = 0
        self.attempt_usage = False
        self.attempt_tokens = 0

    async def _continuation_body(self, route: Route) -> dict[str, Any]:
        """The request that has ``route`` continue what the client already has."""
        body = self.walker.body
        self.continuing = True
        self.joiner = self.reasoning_skip = None
        content = "".join(self._content)
        if not content:
            self.how = "restarting the answer (no text had been sent)"
            self.reasoning_skip = Skipper("".join(self._reasoning))
            return body
        method = await self.walker.continuation(route)
        self.how = method.how
        self.joiner = Joiner(content, method.mode)
        produced = len(self._content) + len(self._reasoning)
        return continuation_body(body, self.joiner.partial, method.mode, produced)


def _choice_chunk(choice: dict[str, Any], delta: dict[str, Any], finish: str | None) -> Chunk:
    return {
        "object": "chat.completion.chunk",
        "choices": [
            {
                "index": choice.get("index", 0),
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
    }


def _content_chunk(text: str) -> Chunk:
    return _choice_chunk({}, {"content": text}, None)


def _usage_chunk(usage: dict[str, int], cached: int = 0) -> Chunk:
    total = usage["prompt_tokens"] + usage["completion_tokens"]
    summed: dict[str, Any] = {**usage, "total_tokens": total}
    if cached:
        summed["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"object": "chat.completion.chunk", "choices": [], "usage": summed}


def cached_tokens(usage: dict[str, Any]) -> int:
    """Cache hits in an upstream's usage: OpenAI's ``prompt_tokens_details.cached_tokens``,
    or DeepSeek's ``prompt_cache_hit_tokens``."""
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens"):
        return int(details["cached_tokens"])
    return int(usage.get("prompt_cache_hit_tokens") or 0)
