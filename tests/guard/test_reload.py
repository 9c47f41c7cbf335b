"""Lexicon files reload when they change, at most once per interval; a broken file changes
nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nobusy.errors import ConfigError
from nobusy.guard import Guard, GuardSettings, LexiconSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, data: str | bytes, bump: int) -> None:
    """Write and move the mtime forward: filesystems may keep only coarse mtimes."""
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    stamp = 1_700_000_000 + bump
    os.utime(path, (stamp, stamp))


@pytest.fixture
def lexicon(tmp_path: Path) -> Path:
    path = tmp_path / "words" / "politics.txt"
    path.parent.mkdir()
    write(path, "旧词\n", bump=0)
    return path


def load(base: Path, clock: Clock) -> Guard:
    settings = GuardSettings(
        lexicons=(LexiconSettings(path=Path("words/politics.txt"), action="block"),)
    )
    return Guard.load(settings, base, clock=clock)


def caught(guard: Guard, word: str) -> bool:
    return any(hit.word == word for hit in guard.check_input(f"……{word}……").hits)


def test_changed_file_is_reloaded_after_the_interval(tmp_path: Path, lexicon: Path) -> None:
    clock = Clock()
    guard = load(tmp_path, clock)
    assert caught(guard, "旧词") and not caught(guard, "新词")
    write(lexicon, "新词\n", bump=10)
    clock.now += 0.5
    assert not caught(guard, "新词")  # not looked at within the interval
    clock.now += 0.6
    assert caught(guard, "新词") and not caught(guard, "旧词")


def test_unchanged_files_are_not_rebuilt(tmp_path: Path, lexicon: Path) -> None:
    guard = load(tmp_path, Clock())
    assert not guard.reload()
    write(lexicon, "新词\n", bump=10)
    assert guard.reload()
    assert not guard.reload()


def test_broken_file_keeps_the_previous_words(
    tmp_path: Path, lexicon: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    guard = load(tmp_path, clock)
    write(lexicon, b"\xff\xfe not utf-8\n", bump=10)
    clock.now += 2
    assert caught(guard, "旧词")
    assert "keeping the previous lexicons" in caplog.text
    assert "not UTF-8" in caplog.text
    caplog.clear()
    clock.now += 2
    assert caught(guard, "旧词")
    assert caplog.text == ""  # the same broken file is reported once
    write(lexicon, "修好的词\n", bump=20)
    clock.now += 2
    assert caught(guard, "修好的词")


def test_deleted_file_keeps_the_previous_words(tmp_path: Path, lexicon: Path) -> None:
    clock = Clock()
    guard = load(tmp_path, clock)
    lexicon.unlink()
    clock.now += 2
    assert caught(guard, "旧词")


def test_a_stream_keeps_the_words_it_started_with(tmp_path: Path, lexicon: Path) -> None:
    guard = load(tmp_path, Clock())
    stream = guard.output_filter()
    write(lexicon, "新词\n", bump=10)
    assert guard.reload()
    assert stream.feed("旧词").blocked
    assert guard.output_filter().feed("新词").blocked


def test_missing_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="politics.txt"):
        load(tmp_path, Clock())
