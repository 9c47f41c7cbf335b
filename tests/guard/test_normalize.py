"""Folding text for matching: each evasion is undone, and every character maps back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nobusy.guard.normalize import HOMOGLYPHS, fold_char, normalize, normalize_word, strip_bidi


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ＦＡＬＵＮ　ｇｏｎｇ１２３", "falungong123"),  # full-width letters, digits and space
        ("FaLuN GONG", "falungong"),  # case
        ("STRASSE Straße", "strassestrasse"),  # full case folding
        ("法輪功", "法轮功"),  # traditional
        ("臺灣獨立", "台湾独立"),
        ("薴", "苎"),  # an OpenCC chain, followed to its end
        ("法 轮\t功\n", "法轮功"),  # spaces
        ("法\u3000轮\u00a0功\u2003", "法轮功"),  # ideographic, no-break and em spaces
        ("法.轮-功_!", "法轮功"),  # punctuation
        ("法，轮。功【】「」…", "法轮功"),  # CJK punctuation
        ("法*轮$功+©😀", "法轮功"),  # symbols and emoji
        ("法\u200b轮\u200c功\u200d", "法轮功"),  # zero-width space, non-joiner, joiner
        ("法\u2060轮\ufeff功\u00ad", "法轮功"),  # word joiner, BOM, soft hyphen
        ("法\u180e轮\u034f功\ufe0f", "法轮功"),  # Mongolian separator, CGJ, variation selector
        ("法\u3164轮\u115f功", "法轮功"),  # Hangul fillers: letters that render blank
        ("fаlun", "falun"),  # Cyrillic а
        ("раураl", "paypal"),  # Cyrillic р а у
        ("ΝΙΚΕ", "nike"),  # Greek capitals
        ("сосо", "coco"),  # Cyrillic с о
        ("fǎlún gōng", "falungong"),  # tone marks are combining marks once decomposed
        ("e\u0301", "e"),
        ("8964", "8964"),  # digits stay digits
        ("①⑩", "110"),  # circled numbers are digits
        ("ﬁ", "fi"),  # ligature
    ],
)
def test_each_evasion_is_folded(text: str, expected: str) -> None:
    assert normalize(text).text == expected


def test_digits_are_not_read_as_letters() -> None:
    assert normalize("p0rn 1337 4ss").text == "p0rn13374ss"


def test_homoglyph_map_targets_latin() -> None:
    assert all(target.isascii() and target.isalpha() for target in HOMOGLYPHS.values())
    assert all(not source.isascii() for source in HOMOGLYPHS)


def test_index_maps_each_character_back() -> None:
    text = "a b\u200bc，法輪ß"
    folded = normalize(text)
    assert folded.text == "abc法轮ss"
    assert folded.index == [0, 2, 4, 6, 7, 8, 8]
    assert [text[i] for i in folded.index] == list("abc法輪ßß")
    assert folded.span(0, 3) == (0, 5)  # the inserted space and zero-width are inside
    assert folded.span(5, 7) == (8, 9)  # both halves of ß come from one character


def test_offset_is_added() -> None:
    assert normalize("a b", offset=10).index == [10, 12]
    assert normalize("a b", offset=10).span(0, 2) == (10, 13)


def test_words_fold_like_text() -> None:
    assert normalize_word(" Ｆａ　Ｌｕｎ ") == normalize("fa lun").text == "falun"
    assert normalize_word("！！") == ""


def test_every_basic_plane_character_folds_to_a_fixed_point() -> None:
    # A folded word must fold to itself, or a lexicon word could never match folded text.
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        folded = fold_char(chr(code))
        assert normalize(folded).text == folded, hex(code)


# Letters, CJK (traditional too, and beyond the basic plane), expanding and dropped characters.
ALPHABET = st.sampled_from(list("aAＡаΑß①ﬁ法輪轮功𠀀 ，\u200b\u00ad\u0301é") + ["e\u0301"])
TEXTS = st.lists(ALPHABET, max_size=30).map("".join) | st.text(max_size=30)


@given(TEXTS)
def test_index_and_origin_agree(text: str) -> None:
    folded = normalize(text)
    index = folded.index
    assert len(index) == len(folded.text)
    assert index == sorted(index)
    assert all(0 <= i < len(text) for i in index)
    assert [normalize(text).origin(i) for i in range(len(index))] == index


@given(TEXTS, TEXTS)
def test_pieces_fold_like_the_whole(left: str, right: str) -> None:
    whole = normalize(left + right)
    first, second = normalize(left), normalize(right, offset=len(left))
    assert first.text + second.text == whole.text
    assert first.index + second.index == whole.index


@given(TEXTS)
def test_folding_is_idempotent(text: str) -> None:
    folded = normalize(text).text
    assert normalize(folded).text == folded


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ɩazy", "lazy"),  # Latin capital iota, drawn as l
        ("Ꮮazy", "lazy"),  # Cherokee TLE, drawn as L
        ("ꮮazy", "lazy"),  # its small form, which case-folds to the capital
        ("ᏞᎪᏃY", "lazy"),  # Cherokee capitals throughout
        ("ⅼazy", "lazy"),  # small Roman numeral fifty
        ("ꓡazy", "lazy"),  # Lisu
        ("ⲟk", "ok"),  # Coptic o
        ("ا", "ا"),  # right-to-left letters are never read as Latin (alef looks like l)
    ],
)
def test_confusable_letters_fold_to_latin(text: str, expected: str) -> None:
    assert normalize(text).text == expected


def test_bidi_controls_are_dropped_and_stripped() -> None:
    text = "say \u202edrow\u202c and \u2067x\u2069"
    assert normalize(text).text == "saydrowandx"
    assert strip_bidi(text) == "say drow and x"
    assert strip_bidi("plain") == "plain"
