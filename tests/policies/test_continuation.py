"""Continuation helpers: request bodies per mode, and never repeating what the client has."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nobusy.routing.continuation import (
    CONTINUE_INSTRUCTION,
    TEXT_CONTINUATION,
    Joiner,
    OverlapTrimmer,
    Skipper,
    continuation_body,
)

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}


def test_prefix_mode_uses_deepseek_prefix_completion() -> None:
    body = continuation_body(BODY, "Hello wor", "prefix", produced_tokens=3)
    assert body["messages"][-1] == {"role": "assistant", "content": "Hello wor", "prefix": True}
    assert body["max_tokens"] == 97
    assert BODY["messages"] == [{"role": "user", "content": "hi"}]  # the original is untouched


def test_vllm_mode_continues_the_final_message() -> None:
    body = continuation_body(BODY, "Hello", "vllm", produced_tokens=0)
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": "Hello"}


def test_none_mode_instructs() -> None:
    body = continuation_body(BODY, "Hello", "none", produced_tokens=200)
    assert body["messages"][-1] == {"role": "user", "content": CONTINUE_INSTRUCTION}
    assert body["max_tokens"] == 1


def test_skipper_drops_what_was_sent_and_passes_the_rest() -> None:
    skip = Skipper(" ")
    assert skip.feed(" world") == "world"
    assert skip.feed("!") == "!"
    assert not skip.diverged


def test_skipper_reports_divergence() -> None:
    skip = Skipper("Let me think")
    assert skip.feed("Let ") == ""
    assert skip.feed("us go") == "us go"
    assert skip.diverged and skip.matched == "Let "


@given(st.text(min_size=1), st.lists(st.integers(1, 5), min_size=1))
def test_skipper_over_any_split_gives_the_remainder(text: str, cuts: list[int]) -> None:
    sent = text[: len(text) // 2]
    skip = Skipper(sent)
    out, i = "", 0
    for size in cuts * (len(text) + 1):
        if i >= len(text):
            break
        out += skip.feed(text[i : i + size])
        i += size
    assert out == text[len(sent) :]


def test_trimmer_removes_a_repeated_tail() -> None:
    trim = OverlapTrimmer("The capital of France is", window=16)
    out = trim.feed("France is Paris, ") + trim.feed("a city on the Seine.")
    assert out == " Paris, a city on the Seine."


def test_trimmer_keeps_text_without_overlap_and_short_coincidences() -> None:
    trim = OverlapTrimmer("I think so", window=8)
    assert trim.feed("o yes") + trim.flush() == "o yes"  # a 1-character overlap is chance
    trim = OverlapTrimmer("abc", window=100)
    assert trim.feed("xyz") == ""
    assert trim.flush() == "xyz"


def test_joiner_skips_whitespace_the_client_has_even_in_what_the_trimmer_held() -> None:
    # A short instructed continuation stays in the trimmer until the end of the stream; the
    # space the client already has must still be skipped when it is released.
    joiner = Joiner("one two three ", "none")
    assert joiner.partial == "one two three"
    assert joiner.feed(" two three four") == ""
    assert joiner.flush() == "four"


@pytest.mark.parametrize("mode", ["prefix", "vllm", "none"])
def test_a_text_completion_continues_with_the_text_appended_to_its_prompt(mode: str) -> None:
    body = {"model": "m", "prompt": "def f(", "suffix": "return 1", "max_tokens": 10}
    new = continuation_body(body, "x, y)", mode, 3)
    assert new == {**body, "prompt": "def f(x, y)", "max_tokens": 7}
    assert body["prompt"] == "def f("  # the original is left as it was
    assert "messages" not in new
    assert TEXT_CONTINUATION.how == "from the cut with the text already sent appended to the prompt"
