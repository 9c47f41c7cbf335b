"""How an answer cut off mid-stream is continued on another route, without repeating a word.

The partial answer goes to the next route with that route's native continuation:

- ``prefix``: DeepSeek's chat prefix completion — a last assistant message with
  ``"prefix": true`` (served at https://api.deepseek.com/beta); the embedded model does the
  same by raw completion after its chat template.
- ``vllm``: a last assistant message with ``continue_final_message: true`` and
  ``add_generation_prompt: false`` (vLLM, SGLang).
- ``none``: an instruction to continue, after which text that repeats the end of the partial
  answer is trimmed (``OverlapTrimmer``).

Trailing whitespace is kept back from the prefix (some providers reject a prefix ending in
whitespace) and dropped again from the continuation by a ``Skipper``, since the client has it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CONTINUE_INSTRUCTION", "OverlapTrimmer", "Skipper", "continuation_body"]

CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped, without repeating "
    "anything and without any preamble."
)
# A repeat shorter than this is as likely a coincidence ("the", a space) as a repeat.
_MIN_OVERLAP = 4


def continuation_body(
    body: dict[str, Any], partial: str, mode: str, produced_tokens: int
) -> dict[str, Any]:
    """The request that continues ``partial`` on a route whose continuation is ``mode``."""
    messages = list(body.get("messages") or [])
    new = dict(body)
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
