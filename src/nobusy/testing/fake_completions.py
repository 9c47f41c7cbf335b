"""The fake upstream's text completions (``/v1/completions``): what it answers to a prompt.

The answer to a prompt is as deterministic as chat's (``fake_upstream.answer_text`` of one
user message holding the prompt, and the ``suffix`` for fill-in-the-middle, so a test sees
that the suffix arrived). A continuation comes as the completion APIs take one: the prompt
with the text already sent appended. The fake finds where its own earlier answer starts in
the prompt and goes on from there, so an answer put together after a cut compares equal to
the uninterrupted one. Every fault mode of the chat side applies unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["completion_messages", "text_conversation"]

_ANSWER_START = "Fake answer to: "


def completion_messages(prompt: str, suffix: str | None = None) -> list[dict[str, Any]]:
    """The conversation the fake answers a completion from (``answer_text`` of it is the
    completion's text)."""
    text = f"{prompt} [suffix: {suffix}]" if suffix else prompt
    return [{"role": "user", "content": text}]


def text_conversation(
    request: dict[str, Any], tokens: int, answer_text: Callable[[list[dict[str, Any]], int], str]
) -> tuple[list[dict[str, Any]], str | None, bool]:
    """As ``fake_upstream._conversation`` for a completions request: the messages, the part
    of the answer the prompt already ends with (or None), and False (never asked in words).
    ``answer_text``: the fake's answer to a conversation."""
    prompt = request.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(p for p in prompt if isinstance(p, str))
    prompt = prompt if isinstance(prompt, str) else ""
    suffix = request.get("suffix")
    suffix = suffix if isinstance(suffix, str) and suffix else None
    # Where its own answer starts: the latest place from which the rest of the prompt is the
    # start of the answer to what comes before it (a cut may come before the first word ends).
    for at in range(len(prompt) - 1, -1, -1):
        partial = prompt[at:]
        if not (partial.startswith(_ANSWER_START) or _ANSWER_START.startswith(partial)):
            continue
        messages = completion_messages(prompt[:at], suffix)
        if answer_text(messages, tokens).startswith(partial):
            return messages, partial, False
    return completion_messages(prompt, suffix), None, False
