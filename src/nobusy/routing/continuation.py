"""How an answer cut off mid-stream is continued on another route, and what to say about it.

The partial answer goes to the next route with that route's continuation:

- ``prefix``: DeepSeek's chat prefix completion — a last assistant message with
  ``"prefix": true`` (served at https://api.deepseek.com/beta); the embedded model does the
  same by raw completion after its chat template.
- ``vllm``: a last assistant message with ``continue_final_message: true`` and
  ``add_generation_prompt: false`` (vLLM, SGLang).
- ``none``: an instruction to continue, after which text that repeats the end of the partial
  answer is trimmed (``OverlapTrimmer``). A model may still restate or reword; nothing checks.
- a text completion (``/v1/completions``) is continued by every upstream alike: the text
  already sent is appended to its prompt (``TEXT_CONTINUATION``), a raw completion by nature.
- ``auto`` (the default): the best of these the upstream was seen to honour, found by a probe
  the first time it is needed (``nobusy.routing.continuation_probe``).

Only a native continuation that was checked is announced as seamless (``Method.how``): a
configured ``prefix`` that the upstream silently ignores makes it start over.

Trailing whitespace is kept back from the prefix (some providers reject a prefix ending in
whitespace) and dropped again from the continuation by a ``Skipper``, since the client has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nobusy.upstreams.base import is_text_completion

__all__ = [
    "CONTINUE_INSTRUCTION",
    "TEXT_CONTINUATION",
    "Joiner",
    "Method",
    "OverlapTrimmer",
    "Skipper",
    "continuation_body",
]

CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped, without repeating "
    "anything and without any preamble."
)
# A repeat shorter than this is as likely a coincidence ("the", a space) as a repeat.
_MIN_OVERLAP = 4


_LABELS = {
    "prefix": "prefix completion",
    "vllm": "continue_final_message",
    "raw": "raw completion",
    "prompt": "the text already sent appended to the prompt",
}


@dataclass(frozen=True, slots=True)
class Method:
    """The continuation a route uses, and whether it was seen to continue from the cut.

    ``mode`` is what goes in the request (``prefix``, ``vllm``, ``none``); ``label`` names it
    for people (the embedded model's ``prefix`` is a raw completion).
    """

    mode: str
    verified: bool = False
    label: str = ""

    @property
    def how(self) -> str:
        """The end of the failover note: what was done, worded by what is known of it."""
        if self.mode not in _LABELS:
            return "asked in words to continue; the text may repeat or differ"
        if self.mode == "prompt":  # a text completion: continued exactly, by construction
            return f"from the cut with {_LABELS['prompt']}"
        label = self.label or _LABELS[self.mode]
        if self.verified:
            return f"from the cut with {label}, checked on this upstream"
        return f"with {label} as configured, not checked; the text may repeat"


def continuation_body(
    body: dict[str, Any], partial: str, mode: str, produced_tokens: int
) -> dict[str, Any]:
    """The request that continues ``partial`` on a route whose continuation is ``mode``."""
    messages = list(body.get("messages") or [])
    new = dict(body)
    if is_text_completion(body):
        new["prompt"] = str(body["prompt"]) + partial
        if isinstance(body.get("max_tokens"), int):
            new["max_tokens"] = max(1, body["max_tokens"] - produced_tokens)
        return new
    if mode == "prefix":
        messages.append({"role": "assistant", "content": partial, "prefix": True})
    elif mode == "vllm":
        messages.append({"role": "assistant", "content": partial})
        new["continue_final_message"] = True
        new["add_generation_prompt"] = False
    else:
        messages.append({"role": "assistant", "content": partial})
        messages.append({"role": "user", "content": CONTINUE_INSTRUCTION})
    new["messages"] = messages
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(name), int):
            new[name] = max(1, body[name] - produced_tokens)
    return new


TEXT_CONTINUATION = Method("prompt", verified=True)
"""How every route continues a text completion: its prompt extended by the text sent."""


class Skipper:
    """Drops text the client already has from the start of a new stream.

    Fed the new stream piece by piece, it swallows what matches ``expected`` and lets the rest
    through. If the new stream says something else (``diverged``), the rest goes through
    unchanged: the text cannot be taken back, so the caller decides what to tell the client.
    """

    __slots__ = ("diverged", "expected", "matched", "position")

    def __init__(self, expected: str) -> None:
        self.expected = expected
        self.position = 0
        self.diverged = False
        self.matched = ""

    @property
    def done(self) -> bool:
        return self.diverged or self.position >= len(self.expected)

    def feed(self, piece: str) -> str:
        if self.done:
            return piece
        rest = self.expected[self.position :]
        common = 0
        for a, b in zip(piece, rest, strict=False):
            if a != b:
                break
            common += 1
        self.position += common
        self.matched += piece[:common]
        if common < len(piece) and self.position < len(self.expected):
            self.diverged = True
        return piece[common:]


class Joiner:
    """What of a continuation's text the client does not have yet.

    ``content`` is what the client has; its trailing whitespace is kept back from the
    partial answer sent upstream and skipped again here. After an instruction (mode
    ``none``) a repeat of the partial answer's end is trimmed as well.
    """

    __slots__ = ("partial", "skipper", "trimmer")

    def __init__(self, content: str, mode: str) -> None:
        self.partial = content.rstrip()
        self.skipper = Skipper(content[len(self.partial) :])
        self.trimmer = OverlapTrimmer(self.partial) if mode not in _LABELS else None

    def feed(self, piece: str) -> str:
        if self.trimmer is not None:
            piece = self.trimmer.feed(piece)
        return self.skipper.feed(piece) if piece else piece

    def flush(self) -> str:
        """What the trimmer still holds, at the end of the stream."""
        if self.trimmer is None or self.trimmer.done:
            return ""
        held = self.trimmer.flush()
        return self.skipper.feed(held) if held else held


class OverlapTrimmer:
    """Removes a repeat of the partial answer's end from the start of an instructed continuation.

    Holds back the first ``window`` characters of the continuation, then drops the longest
    prefix of them that the partial answer ends with.
    """

    __slots__ = ("buffer", "done", "partial", "window")

    def __init__(self, partial: str, window: int = 64) -> None:
        self.partial = partial
        self.window = window
        self.buffer = ""
        self.done = not partial

    def feed(self, piece: str) -> str:
        if self.done:
            return piece
        self.buffer += piece
        if len(self.buffer) < self.window:
            return ""
        return self.flush()

    def flush(self) -> str:
        """Release what is held (at the end of the stream, or once the window is full)."""
        if self.done:
            return ""
        self.done = True
        text = self.buffer
        for size in range(min(len(text), len(self.partial)), _MIN_OVERLAP - 1, -1):
            if self.partial.endswith(text[:size]):
                return text[size:]
        return text
