"""The output filter: words split across chunks are found, and streaming gives exactly what
checking the whole answer gives."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nobusy.guard as guard_module
from nobusy.guard import FilterStep, Hit, Matcher, StreamFilter
from nobusy.guard.lexicon import Action, Entry

# Families of words that are prefixes of each other, across and within actions.
WORDS: list[tuple[str, Action]] = [
    ("法轮功", "block"),
    ("法轮", "flag"),
    ("轮子", "mask"),
    ("共产党", "mask"),
    ("产党", "flag"),
    ("天安门", "mask"),
    ("天安门事件", "mask"),
    ("𠀀字", "mask"),  # beyond the basic plane
    ("ss", "mask"),  # ß folds to it: one input character, two folded ones
    ("abc", "flag"),
    ("b", "mask"),
]
MATCHER = Matcher(Entry(word, "test.txt", None, action) for word, action in WORDS)
NO_BLOCK = Matcher(Entry(w, "test.txt", None, a) for w, a in WORDS if a != "block")

# How each character may be written (traditional, full-width, upper case, look-alike, ß)...
SPELLINGS = {"轮": "轮輪", "产": "产產", "门": "门門", "b": "bＢBв", "s": "sSß", "a": "aаＡ"}
# ...and what evasion inserts between characters: spaces, punctuation, zero-width, accents.
FILLERS = [
    " ",
    "\u3000",
    "，",
    "*",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\u00ad",
    "\u0301",
    "\u200b \u200b",
]
OTHERS = list("好的一𠀀") + FILLERS


@st.composite
def spelled(draw: st.DrawFn) -> str:
    """A word, or the start of one, in disguise."""
    word = draw(st.sampled_from([w for w, _ in WORDS]))
    word = word[: draw(st.integers(1, len(word)))]
    out = []
    for char in word:
        out.append(draw(st.sampled_from(SPELLINGS.get(char, char))))
        out.append(draw(st.sampled_from(["", "", *FILLERS])))
    return "".join(out)


TEXTS = st.lists(spelled() | st.sampled_from(OTHERS), max_size=25).map("".join)


def whole(matcher: Matcher, text: str) -> tuple[str, list[Hit], bool]:
    """What a stream may release: all of it, or up to the first block word (and hits so far)."""
    verdict = matcher.check(text)
    for n, hit in enumerate(verdict.hits):
        if hit.action == "block":
            return verdict.text[: hit.start], verdict.hits[: n + 1], True
    return verdict.text, verdict.hits, False


def streamed(matcher: Matcher, text: str, sizes: list[int]) -> tuple[str, list[Hit], bool]:
    stream = StreamFilter(matcher)
    released: list[str] = []
    hits: list[Hit] = []
    position = 0
    steps: list[FilterStep] = []
    for size in sizes:
        if position >= len(text):
            break
        steps.append(stream.feed(text[position : position + size]))
        position += size
    if position < len(text):
        steps.append(stream.feed(text[position:]))
    steps.append(stream.finish())
    blocked = False
    for step in steps:
        if blocked:  # after a block the caller stops; the filter must say so and release nothing
            assert step == FilterStep(blocked=True)
            continue
        released.append(step.text)
        hits += step.hits
        blocked = step.blocked
    return "".join(released), hits, blocked


@settings(max_examples=400, deadline=None)
@given(TEXTS, st.lists(st.integers(1, 3), max_size=80))
def test_small_chunks_match_the_whole(text: str, sizes: list[int]) -> None:
    for matcher in (MATCHER, NO_BLOCK):
        assert streamed(matcher, text, sizes) == whole(matcher, text)


@settings(max_examples=200, deadline=None)
@given(TEXTS, st.lists(st.integers(0, 40), max_size=20))
def test_any_chunks_match_the_whole(text: str, sizes: list[int]) -> None:
    for matcher in (MATCHER, NO_BLOCK):
        assert streamed(matcher, text, sizes) == whole(matcher, text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40), st.lists(st.integers(1, 5), max_size=40))
def test_any_text_matches_the_whole(text: str, sizes: list[int]) -> None:
    assert streamed(MATCHER, text, sizes) == whole(MATCHER, text)


SIMPLE = Matcher(Entry(word, "test.txt", None, "mask") for word in ["共产党", "天安门事件"])


def test_holds_back_only_what_a_word_could_need() -> None:
    # The longest word is 5 folded characters: 4 are held, the rest goes at once.
    stream = StreamFilter(SIMPLE)
    assert stream.feed("一二三四五六七").text == "一二三"
    assert stream.feed("八").text == "四"
    assert stream.finish().text == "五六七八"


def test_a_word_split_over_chunks_is_found() -> None:
    stream = StreamFilter(SIMPLE)
    assert stream.feed("说了一些话共").text == "说了"
    assert stream.feed("产").text == "一"
    assert stream.feed("党").text == "些"
    # 共产党 is certain once no longer word starting there could still arrive (or at the end).
    step = stream.feed("好吗？")
    assert step.text == "话＊＊＊"
    assert [(h.start, h.end, h.word) for h in step.hits] == [(5, 8, "共产党")]
    assert stream.finish().text == "好吗？"


def test_dropped_characters_are_held_with_the_word_they_may_belong_to() -> None:
    stream = StreamFilter(SIMPLE)
    # 天 安 门 may become 天安门事件: the spaces inside it are held with it.
    assert stream.feed("一二三四五六七 八天 安 门").text == "一二三四五六七 "
    step = stream.feed(" 事\u200b件")
    assert step.text == "八＊＊＊＊＊＊＊＊＊"
    assert step.hits[0].matched == "天 安 门 事\u200b件"


def test_block_releases_the_clean_text_before_the_word_and_then_nothing() -> None:
    stream = StreamFilter(Matcher([Entry("法轮功", "test.txt", None, "block")]))
    assert stream.feed("前面的话一二三四").text == "前面的话一二"
    step = stream.feed("法 輪 功后面")
    assert step.blocked
    assert step.text == "三四"
    assert [h.matched for h in step.hits] == ["法 輪 功"]
    assert stream.blocked
    assert stream.feed("更多") == FilterStep(blocked=True)
    assert stream.finish() == FilterStep(blocked=True)


def test_split_words_are_missed_when_chunks_are_checked_alone() -> None:
    # What peers do, as a baseline for the test above: each chunk checked on its own.
    text = "共产党" * 3
    alone = sum(len(SIMPLE.check(text[i : i + 2]).hits) for i in range(0, len(text), 2))
    assert alone == 0
    assert len(streamed(SIMPLE, text, [2] * 5)[1]) == 3


def test_a_long_text_is_checked_in_pieces_with_the_whole_text_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pieces of 7 characters put many words across a piece boundary.
    monkeypatch.setattr(guard_module, "_PIECE", 7)
    rng = random.Random(7)
    texts = [
        "".join(
            rng.choice(["法轮", "功", "轮子", "共产党", "x ", "天安门事件", "ß", "b"])
            for _ in range(60)
        )
        for _ in range(40)
    ]
    for text in texts:
        for matcher in (MATCHER, NO_BLOCK):
            whole = matcher.check(text)
            pieces = guard_module._check_in_pieces(matcher, text)
            assert pieces.blocked == whole.blocked
            if not whole.blocked:
                assert pieces.text == whole.text
                assert pieces.hits == whole.hits
