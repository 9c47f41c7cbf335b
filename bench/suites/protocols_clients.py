"""The three client protocols as their official SDKs speak them, each answer read into one shape.

``ask(protocol, ...)`` sends one request with the ``openai`` SDK (chat completions, Responses)
or the ``anthropic`` SDK (Messages), streamed or not, and returns an ``Answer``: the text, the
reasoning, the tool calls with their arguments parsed, and what was wrong with the answer's
form (``flaws``): a stream whose deltas do not add up to its final object, two
``response.created``, sequence numbers with gaps, a missing stop reason, arguments that are
not JSON. A failed request is an ``Answer`` whose ``error`` says what the client saw.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai

__all__ = ["PROTOCOLS", "Answer", "Clients", "ask"]

PROTOCOLS = ("chat", "messages", "responses")
PROMPT = "Are you there?"
MAX_TOKENS = 4096

# The one function tool every protocol offers, in each protocol's own shape.
_SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}}
_TOOLS: dict[str, list[Any]] = {
    "chat": [{"type": "function", "function": {"name": "search", "parameters": _SCHEMA}}],
    "messages": [{"name": "search", "description": "Search.", "input_schema": _SCHEMA}],
    "responses": [{"type": "function", "name": "search", "parameters": _SCHEMA}],
}


@dataclass
class Answer:
    """What one client got, in a shape common to the three protocols."""

    text: str = ""
    reasoning: str = ""
    tools: list[tuple[str, Any]] = field(default_factory=list)  # (name, parsed arguments)
    stop: str = ""  # the protocol's own finish/stop reason or status
    flaws: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # departures from the spec the SDK tolerates
    error: str | None = None
    elapsed_s: float = 0.0

    def same_as(self, healthy: Answer) -> bool:
        return (self.text, self.reasoning, self.tools, self.stop) == (
            healthy.text,
            healthy.reasoning,
            healthy.tools,
            healthy.stop,
        )

    def verdict(self, healthy: Answer) -> str:
        """``ok``, or what differs from the healthy answer (first difference only)."""
        if self.error is not None:
            return self.error
        if self.flaws:
            return "malformed: " + "; ".join(self.flaws)
        if self.text != healthy.text:
            size = f"{len(self.text)} chars, healthy {len(healthy.text)}"
            return f"text differs: {self.text[:60]!r}… ({size})"
        if self.reasoning != healthy.reasoning:
            return f"reasoning differs: {self.reasoning[:60]!r}…"
        if self.tools != healthy.tools:
            return f"tool calls differ: {self.tools!r}"
        if self.stop != healthy.stop:
            return f"stop reason {self.stop!r}, healthy {healthy.stop!r}"
        return "ok"


class Clients:
    """One SDK client per protocol for one gateway; ``timeout`` caps every request."""

    def __init__(self, port: int, key: str, timeout: float) -> None:
        root = f"http://127.0.0.1:{port}"
        self.openai = openai.OpenAI(
            base_url=root + "/v1", api_key=key, max_retries=0, timeout=timeout
        )
        self.anthropic = anthropic.Anthropic(
            base_url=root, api_key=key, max_retries=0, timeout=timeout
        )
        self.deadline = timeout

    def close(self) -> None:
        self.openai.close()
        self.anthropic.close()


def _args(raw: Any, flaws: list[str]) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw or "")
    except ValueError:
        flaws.append(f"tool arguments are not JSON: {str(raw)[:60]!r}")
        return raw


# --- chat completions ---------------------------------------------------------------------------


def _chat(sdk: openai.OpenAI, model: str, stream: bool, extra: dict[str, Any]) -> Answer:
    messages: Any = [{"role": "user", "content": PROMPT}]
    out = Answer()
    if not stream:
        result = sdk.chat.completions.create(model=model, messages=messages, **extra)
        message: Any = result.choices[0].message
        out.text = message.content or ""
        out.reasoning = getattr(message, "reasoning_content", None) or ""
        out.tools = [
            (c.function.name, _args(c.function.arguments, out.flaws))
            for c in message.tool_calls or ()
        ]
        out.stop = result.choices[0].finish_reason or ""
        return out
    content, reasoning, finishes, ids = [], [], [], set()
    calls: dict[int, dict[str, str]] = {}
    for chunk in sdk.chat.completions.create(model=model, messages=messages, stream=True, **extra):
        ids.add(chunk.id)
        if not chunk.choices:
            continue
        delta: Any = chunk.choices[0].delta
        content.append(delta.content or "")
        reasoning.append(getattr(delta, "reasoning_content", None) or "")
        for call in delta.tool_calls or ():
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            entry["name"] += (call.function and call.function.name) or ""
            entry["arguments"] += (call.function and call.function.arguments) or ""
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    if len(finishes) != 1:
        out.flaws.append(f"{len(finishes)} finish reasons")
    if len(ids) > 1:
        out.flaws.append(f"{len(ids)} completion ids in one stream")
    out.text, out.reasoning = "".join(content), "".join(reasoning)
    out.tools = [(c["name"], _args(c["arguments"], out.flaws)) for _, c in sorted(calls.items())]
    out.stop = finishes[-1] if finishes else ""
    return out


# --- Messages -----------------------------------------------------------------------------------


def _blocks(message: Any, out: Answer) -> None:
    out.text = "".join(b.text for b in message.content if b.type == "text")
    out.reasoning = "".join(b.thinking for b in message.content if b.type == "thinking")
    out.tools = [(b.name, b.input) for b in message.content if b.type == "tool_use"]
    out.stop = message.stop_reason or ""


def _messages(sdk: anthropic.Anthropic, model: str, stream: bool, extra: dict[str, Any]) -> Answer:
    kwargs: Any = {"max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": PROMPT}]}
    out = Answer()
    if not stream:
        _blocks(sdk.messages.create(model=model, **kwargs, **extra), out)
        return out
    with sdk.messages.stream(model=model, **kwargs, **extra) as events:
        types, text = [], []
        for event in events:
            types.append(event.type)
            if event.type == "text":
                text.append(event.text)
        message = events.get_final_message()
    _blocks(message, out)
    if "".join(text) != out.text:
        out.flaws.append("text deltas differ from the final message")
    if types.count("message_start") != 1 or types[-1:] != ["message_stop"]:
        out.flaws.append(f"events {types[:2]}…{types[-2:]}")
    if types.count("message_delta") != 1:
        out.flaws.append(f"{types.count('message_delta')} message_delta")
    opened, closed = types.count("content_block_start"), types.count("content_block_stop")
    if opened != closed or opened != len(message.content):
        out.flaws.append(f"{opened} blocks started, {closed} stopped, {len(message.content)} kept")
    return out


# --- Responses ----------------------------------------------------------------------------------


def _output(response: Any, out: Answer) -> None:
    out.text = response.output_text
    out.reasoning = "".join(
        c.text for item in response.output if item.type == "reasoning" for c in item.content or ()
    )
    out.tools = [
        (item.name, _args(item.arguments, out.flaws))
        for item in response.output
        if item.type == "function_call"
    ]
    out.stop = response.status or ""


def _responses(sdk: openai.OpenAI, model: str, stream: bool, extra: dict[str, Any]) -> Answer:
    out = Answer()
    if not stream:
        _output(sdk.responses.create(model=model, input=PROMPT, **extra), out)
        return out
    events = list(sdk.responses.create(model=model, input=PROMPT, stream=True, **extra))
    types = [e.type for e in events]
    final = events[-1] if events else None
    if final is None or final.type not in ("response.completed", "response.incomplete"):
        error = next((e for e in events if e.type == "error"), None)
        said = getattr(error, "message", None) or (types[-1] if types else "no events")
        out.error = f"stream ended with {types[-1] if types else 'nothing'}: {said}"[:200]
        return out
    _output(final.response, out)
    for once in ("response.created", "response.completed"):
        if types.count(once) > 1:
            out.flaws.append(f"{types.count(once)} {once}")
    added, done = (
        types.count("response.output_item.added"),
        types.count("response.output_item.done"),
    )
    if added != done or added != len(final.response.output):
        out.flaws.append(f"{added} items added, {done} done, {len(final.response.output)} kept")
    numbers = [getattr(e, "sequence_number", None) for e in events]
    if numbers != list(range(len(events))):
        # The SDK reads the answer without them, so this is a note and not a flaw.
        out.notes.append(
            f"sequence numbers {numbers[:3]}…{numbers[-2:]}, not 0..{len(numbers) - 1}"
        )
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    if deltas != out.text:
        out.flaws.append("text deltas differ from output_text")
    return out


# --- one request ----------------------------------------------------------------------------


def extras(protocol: str, kind: str) -> dict[str, Any]:
    """What a request asks besides its prompt: thinking/reasoning or the tool, per protocol."""
    if kind == "reasoning":
        asks: dict[str, dict[str, Any]] = {
            "chat": {},
            "messages": {"thinking": {"type": "enabled", "budget_tokens": 2048}},
            "responses": {"reasoning": {"effort": "low"}},
        }
        return asks[protocol]
    if kind == "tool":
        return {"tools": _TOOLS[protocol]}
    return {}


def _send(
    clients: Clients, protocol: str, model: str, stream: bool, extra: dict[str, Any]
) -> Answer:
    try:
        if protocol == "chat":
            return _chat(clients.openai, model, stream, extra)
        if protocol == "messages":
            return _messages(clients.anthropic, model, stream, extra)
        return _responses(clients.openai, model, stream, extra)
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        return Answer(error=f"HTTP {exc.status_code}: {str(exc.message)[:160]}")
    except (openai.APITimeoutError, anthropic.APITimeoutError):
        return Answer(error=f"no answer within {clients.deadline:g} s")
    except (openai.APIError, anthropic.APIError, httpx.HTTPError) as exc:
        return Answer(error=f"{type(exc).__name__}: {str(exc)[:160]}")
    except Exception as exc:  # a report beats a crash in a thread that may be given up
        return Answer(error=f"{type(exc).__name__}: {str(exc)[:160]}")


def ask(clients: Clients, protocol: str, model: str, stream: bool, kind: str = "text") -> Answer:
    """One request of ``protocol`` to ``model``; never raises for what the gateway did. A
    stream of keep-alive comments never trips the SDK's read timeout, so the request runs on a
    daemon thread and is given up after ``clients.deadline`` seconds of wall time."""
    extra = extras(protocol, kind)
    started = time.monotonic()
    box: list[Answer] = []
    worker = threading.Thread(
        target=lambda: box.append(_send(clients, protocol, model, stream, extra)), daemon=True
    )
    worker.start()
    worker.join(clients.deadline + 1.0)
    out = box[0] if box else Answer(error=f"no answer within {clients.deadline:g} s")
    out.elapsed_s = time.monotonic() - started
    return out
