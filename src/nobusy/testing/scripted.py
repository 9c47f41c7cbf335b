"""An in-process upstream that plays a script: one step per call, each a way to answer or fail.

``ScriptedUpstream`` implements the upstream protocol (``nobusy.upstreams.base.Upstream``)
without a socket, as httpx's ``MockTransport`` stands in for a server. Each call to ``stream``
takes the next step of its script (or asks a callable for one) and plays it: the OpenAI
``chat.completion.chunk`` dicts a real server would stream, then the error of
``nobusy.errors`` that the ``openai`` kind raises for that fault (a refusal's class comes
from ``nobusy.upstreams.base.status_error``, the table the openai kind uses too). Every call is
recorded in ``calls`` with how it ended, for assertions such as "the second upstream was asked to
continue this partial answer" or "the hedged loser was closed".

The steps are in ``nobusy.testing.steps``. Steps that answer speak ``text`` if they have one,
else the upstream's ``answer``; asked to continue a partial answer of that ``answer`` (any
continuation mode), they speak only the rest, as a real model would, so an answer assembled
after a failover equals the uninterrupted one. Every streamed step starts with a role-only
chunk, as real servers do, which is not a token.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, PositiveFloat

from nobusy.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnreachable,
)
from nobusy.routing.continuation import CONTINUE_INSTRUCTION
from nobusy.testing.steps import (
    Answer,
    CutAfter,
    ErrorEvent,
    Garbage,
    Hang,
    KeepAliveOnly,
    Raise,
    Refuse,
    Reply,
    Script,
    Slow,
    Step,
    ToolCall,
    Unreachable,
)
from nobusy.upstreams.base import Chunk, Probe, UpstreamCall, UpstreamSettings, status_error

__all__ = [
    "DEFAULT_ANSWER",
    "ScriptExhausted",
    "ScriptedCall",
    "ScriptedUpstream",
    "Settings",
    "pieces",
]

DEFAULT_ANSWER = "alpha bravo charlie delta echo foxtrot golf hotel"


class Settings(UpstreamSettings):
    """A scripted in-process upstream; its timeouts are short so a hang fails over at once."""

    kind: Literal["scripted"] = Field("scripted", description="A scripted in-process upstream.")
    first_token_timeout: PositiveFloat = Field(
        0.1, description="Seconds to the first token before failing over (short for tests)."
    )
    idle_timeout: PositiveFloat = Field(
        0.1, description="Longest gap between two tokens, in seconds (short for tests)."
    )


class ScriptExhausted(AssertionError):
    """The upstream was called more often than its script has steps: the test is wrong."""


@dataclass
class ScriptedCall:
    """One call the upstream received: what was asked, what it played, and how it ended.

    ``ended`` is ``finished``, ``failed`` (a scripted error), ``closed`` (the caller stopped
    reading: a cancelled hedge, a timeout, a client gone) or ``running``."""

    call: UpstreamCall
    step: Step
    chunks: list[Chunk] = field(default_factory=list)
    ended: Literal["running", "finished", "failed", "closed"] = "running"

    @property
    def body(self) -> dict[str, Any]:
        return self.call.body


# --- the upstream ----------------------------------------------------------------------------


class ScriptedUpstream:
    """Plays one step of ``script`` per call (``Reply()`` for every call when it is None).

    ``settings`` are the upstream's options (``Settings()`` by default: 0.1 s timeouts); the
    router reads its timeouts and continuation mode there, and a ``nobusy.settings.Settings``
    built for a test should hold the same object under ``upstreams``. ``sleep`` is awaited for
    every delay, gap and keep-alive, so a test may pass a fake clock's sleep."""

    kind: ClassVar[str] = "scripted"

    def __init__(
        self,
        name: str,
        script: Script | None = None,
        *,
        settings: UpstreamSettings | None = None,
        answer: str = DEFAULT_ANSWER,
        default_model: str = "scripted-model",
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self.settings = settings if settings is not None else Settings()
        self.default_model = default_model
        self.answer = answer
        self.sleep = sleep
        self.calls: list[ScriptedCall] = []
        self.probe_ok = True
        self.started = False
        self.closed = False
        self._script = script
        self._steps = iter(script) if isinstance(script, Sequence) else None
        self._ids = itertools.count(1)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The request bodies received, in order."""
        return [c.call.body for c in self.calls]

    def next_step(self, call: UpstreamCall) -> Step:
        if self._script is None:
            return Reply()
        if self._steps is None:
            assert callable(self._script)
            return self._script(call)
        step = next(self._steps, None)
        if step is None:
            raise ScriptExhausted(f"{self.name}: call {len(self.calls) + 1} has no scripted step")
        return step

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        """Play the next step as OpenAI chunks; its fault is raised as ``nobusy.errors``."""
        record = ScriptedCall(call, self.next_step(call))
        self.calls.append(record)
        try:
            async with aclosing(self._play(record.step, call)) as chunks:
                async for chunk in chunks:
                    record.chunks.append(chunk)
                    yield chunk
        except UpstreamError:
            record.ended = "failed"
            raise
        except (GeneratorExit, asyncio.CancelledError):
            record.ended = "closed"
            raise
        record.ended = "finished"

    async def _play(self, step: Step, call: UpstreamCall) -> AsyncGenerator[Chunk, None]:
        if isinstance(step, Refuse):
            raise status_error(step.status, step.message, self.name, step.retry_after)
        if isinstance(step, Unreachable):
            raise UpstreamUnreachable("cannot connect: connection refused", upstream=self.name)
        if isinstance(step, Reply | ToolCall):
            for chunk in self._answer_chunks(step, call):
                yield chunk
            return
        chunks = self._answer_chunks(step.of or Reply(), call)
        if isinstance(step, Slow):
            sent = 0
            for chunk in chunks:
                if _is_piece(chunk):
                    await self.sleep(step.delay if sent == 0 else step.gap)
                    sent += 1
                yield chunk
            return
        # A fault: the role chunk, the first pieces, then the fault (no finish, no usage).
        yield chunks[0]
        for chunk in [c for c in chunks if _is_piece(c)][: _after(step)]:
            yield chunk
        async for chunk in self._fail(step):
            yield chunk

    async def _fail(self, step: Step) -> AsyncGenerator[Chunk, None]:
        # The errors and messages are the openai kind's for the same fault on the wire.
        name = self.name
        if isinstance(step, Hang):
            await asyncio.Event().wait()  # until the router's deadline cancels the read
        elif isinstance(step, KeepAliveOnly):
            beats = 0
            while step.beats is None or beats < step.beats:
                await self.sleep(step.interval)
                beats += 1
                if step.empty_chunks:
                    yield _chunk("chatcmpl-scripted-keepalive", self.default_model, {}, None)
            raise UpstreamProtocolError(
                "connection broken mid-answer: Server disconnected", upstream=name
            )
        elif isinstance(step, CutAfter):
            raise UpstreamProtocolError(
                "connection broken mid-answer: Server disconnected", upstream=name
            )
        elif isinstance(step, ErrorEvent):
            raise UpstreamProtocolError(
                f"error in stream: {step.message}", upstream=name, status=200
            )
        elif isinstance(step, Garbage):
            raise UpstreamProtocolError(
                "upstream sent malformed JSON in its event stream", upstream=name
            )
        elif isinstance(step, Raise):
            raise step.error

    # --- chunks --------------------------------------------------------------------------

    def _answer_chunks(self, answer: Answer, call: UpstreamCall) -> list[Chunk]:
        """Every chunk of the whole answer: role, pieces, finish, usage."""
        cid = f"chatcmpl-scripted-{next(self._ids)}"
        model = call.model or self.default_model

        def chunk(delta: dict[str, Any], finish: str | None = None) -> Chunk:
            return _chunk(cid, model, delta, finish)

        out = [chunk({"role": "assistant", "content": ""})]
        if isinstance(answer, ToolCall):
            out.extend(chunk({"tool_calls": [part]}) for part in _tool_parts(answer))
            finish = "tool_calls"
        else:
            thoughts = answer.reasoning
            thoughts = pieces(thoughts) if isinstance(thoughts, str) else list(thoughts)
            out.extend(chunk({"reasoning_content": t}) for t in thoughts)
            out.extend(chunk({"content": p}) for p in self._text(answer, call))
            finish = "stop"
        out.append(chunk({}, finish))
        if isinstance(answer, ToolCall) or answer.usage:
            prompt = _prompt_tokens(call.body)
            completion = sum(_is_piece(c) for c in out)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            out.append({**chunk({}), "choices": [], "usage": usage})
        return out

    def _text(self, answer: Reply, call: UpstreamCall) -> list[str]:
        if answer.text is not None:
            return pieces(answer.text) if isinstance(answer.text, str) else list(answer.text)
        partial = _partial(call.body)
        if partial is None or not self.answer.startswith(partial):
            return pieces(self.answer)
        return pieces(self.answer[len(partial) :])

    # --- the rest of the protocol --------------------------------------------------------

    async def start(self) -> None:
        """Called once at app start-up (the protocol's warm-up)."""
        self.started = True

    async def probe(self) -> Probe:
        """Healthy unless a test set ``probe_ok`` to False."""
        detail = "" if self.probe_ok else "scripted probe failure"
        return Probe(self.probe_ok, 0.0, [self.default_model] if self.probe_ok else [], detail)

    async def aclose(self) -> None:
        self.closed = True


if TYPE_CHECKING:
    from nobusy.upstreams.base import Upstream

    def _is_an_upstream(upstream: ScriptedUpstream) -> Upstream:
        return upstream  # mypy proves the double satisfies the protocol


_PIECE = re.compile(r"\s*\S+\s*")


def pieces(text: str) -> list[str]:
    """``text`` as streamed: one piece per word, with the spaces around it."""
    found: list[str] = _PIECE.findall(text)
    return found or ([text] if text else [])


def _after(step: Hang | KeepAliveOnly | CutAfter | ErrorEvent | Garbage | Raise) -> int:
    return step.n if isinstance(step, CutAfter) else step.after


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None) -> Chunk:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _tool_parts(tool: ToolCall) -> list[dict[str, Any]]:
    """The tool call's deltas: id, type and name first, then the arguments in pieces."""
    head = {"index": 0, "id": tool.id, "type": "function", "function": {"name": tool.name}}
    args = tool.arguments
    size = max(1, -(-len(args) // max(1, tool.parts)))  # ceiling division
    rest = [
        {"index": 0, "function": {"arguments": args[i : i + size]}}
        for i in range(0, len(args), size)
    ]
    return [head, *rest]


def _is_piece(chunk: Chunk) -> int:
    """1 for a chunk that carries content, reasoning or a tool call (a token), else 0."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            return 1
    return 0


def _partial(body: dict[str, Any]) -> str | None:
    """The partial answer a continuation request carries, in any continuation mode."""
    messages = body.get("messages") or []
    if len(messages) >= 2 and messages[-1].get("content") == CONTINUE_INSTRUCTION:
        messages = messages[:-1]
    last = messages[-1] if messages else {}
    if last.get("role") == "assistant" and isinstance(last.get("content"), str):
        return str(last["content"])
    return None


def _prompt_tokens(body: dict[str, Any]) -> int:
    words = 0
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            words += len(content.split())
    return max(1, words)
