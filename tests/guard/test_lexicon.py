"""Lexicon files, whole-text checks, masks and which action wins."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from nobusy.errors import ConfigError
from nobusy.guard import Guard, GuardSettings, LexiconSettings, Matcher
from nobusy.guard.lexicon import Action, Entry, mask, read_lexicon


def matcher(*words: tuple[str, Action]) -> Matcher:
    return Matcher(Entry(word, "test.txt", None, action) for word, action in words)


def test_lexicon_file_format(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    text = "\ufeff# a comment\n\n法轮功\tpolitics\r\n  spaced word  \n#not a word\nplain\t\n"
    path.write_text(text, encoding="utf-8")
    assert read_lexicon(path) == [("法轮功", "politics"), ("spaced word", None), ("plain", None)]


def test_unreadable_lexicons_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_lexicon(tmp_path / "missing.txt")
    broken = tmp_path / "broken.txt"
    broken.write_bytes("好\n坏\n".encode() + b"\xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8 at line 3"):
        read_lexicon(broken)


def test_settings_shape() -> None:
    settings = GuardSettings.model_validate(
        {"lexicons": [{"path": "words/politics.txt", "action": "block"}]}
    )
    assert settings.lexicons[0].scope == "both"
    with pytest.raises(ValidationError):
        LexiconSettings.model_validate({"path": "x", "action": "drop"})
    with pytest.raises(ValidationError):
        GuardSettings.model_validate({"lexicons": [], "extra": 1})
    for model in (GuardSettings, LexiconSettings):
        assert all(field.description for field in model.model_fields.values())


def test_hit_spans_and_masks_are_in_the_original_text() -> None:
    text = "前文 法 輪\u200b功 后文"
    verdict = matcher(("法轮功", "mask")).check(text)
    [hit] = verdict.hits
    assert (hit.start, hit.end, hit.matched, hit.word) == (3, 8, "法 輪\u200b功", "法轮功")
    assert verdict.text == "前文 ＊＊＊＊＊ 后文"  # one ＊ per code point, inserted ones too
    assert len(verdict.text) == len(text)
    assert not verdict.blocked


def test_mask_counts_code_points() -> None:
    verdict = matcher(("𠀀b", "mask")).check("a𠀀Ｂc")
    assert verdict.text == "a＊＊c"


def test_mask_merges_overlapping_spans() -> None:
    assert mask("abcdef", [(1, 4), (2, 3), (3, 5)]) == "a＊＊＊＊f"
    assert mask("abcdef", [(11, 13)], offset=10) == "a＊＊def"
    assert mask("abc", []) == "abc"


def test_flag_only_reports() -> None:
    verdict = matcher(("brand", "flag")).check("a BRAND b")
    assert verdict.text == "a BRAND b"
    assert [h.action for h in verdict.hits] == ["flag"]
    assert not verdict.blocked


def test_block_wins_over_mask_and_flag_for_the_same_word() -> None:
    orders: list[list[Action]] = [["flag", "mask", "block"], ["block", "flag", "mask"]]
    for order in orders:
        found = matcher(*((" 坏词 ", action) for action in order)).check("有坏词")
        assert [h.action for h in found.hits] == ["block"]
        assert found.blocked


def test_mask_wins_over_flag_for_words_that_fold_alike() -> None:
    found = matcher(("ABC", "flag"), ("a b c", "mask")).check("xabcx")
    assert [(h.action, h.word) for h in found.hits] == [("mask", "a b c")]
    assert found.text == "x＊＊＊x"


def test_a_short_block_word_is_not_hidden_by_a_longer_flag_word() -> None:
    found = matcher(("坏", "block"), ("坏人好事", "flag"), ("人好", "mask")).check("说坏人好事")
    assert [(h.action, h.matched) for h in found.hits] == [
        ("block", "坏"),
        ("flag", "坏人好事"),
        ("mask", "人好"),
    ]
    assert found.blocked
    assert found.text == "说＊＊＊事"


def test_leftmost_longest_within_one_action() -> None:
    found = matcher(("法轮", "mask"), ("法轮功", "mask"), ("功法", "mask")).check("法轮功法")
    assert [h.matched for h in found.hits] == ["法轮功"]


def test_words_without_letters_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    found = matcher(("！！", "block"), ("好", "mask"))
    assert found.words == 1
    assert "no letters or digits" in caplog.text


def test_guard_scopes(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("输入词\n", encoding="utf-8")
    (tmp_path / "out.txt").write_text("输出词\tcat\n", encoding="utf-8")
    (tmp_path / "both.txt").write_text("两者词\n", encoding="utf-8")
    settings = GuardSettings(
        lexicons=(
            LexiconSettings(path=Path("in.txt"), action="block", scope="input"),
            LexiconSettings(path=Path("out.txt"), action="mask", scope="output"),
            LexiconSettings(path=Path("both.txt"), action="flag"),
        )
    )
    guard = Guard.load(settings, tmp_path)
    assert guard.words == (2, 2)
    text = "输入词 输出词 两者词"
    assert [h.word for h in guard.check_input(text).hits] == ["输入词", "两者词"]
    output = guard.check_output(text)
    assert [(h.word, h.category, h.lexicon) for h in output.hits] == [
        ("输出词", "cat", str(tmp_path / "out.txt")),
        ("两者词", None, str(tmp_path / "both.txt")),
    ]
    assert output.text == "输入词 ＊＊＊ 两者词"


def test_no_lexicons_checks_nothing() -> None:
    guard = Guard.load(GuardSettings(), Path("."))
    assert not guard.checks_input and not guard.checks_output
    assert guard.check_input("anything").hits == []
    step = guard.output_filter().feed("anything")
    assert step.text == "anything"
