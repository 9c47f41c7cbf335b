"""Lexicon settings and files, and the compiled matcher that finds their words in a text.

Words are grouped by action, one Aho-Corasick automaton (leftmost-longest) per action, so a
short ``block`` word is never hidden inside a longer ``flag`` word; a word listed under several
actions keeps the strongest (block > mask > flag).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ahocorasick_rs
from pydantic import BaseModel, ConfigDict, Field

from nobusy.errors import ConfigError
from nobusy.guard.normalize import normalize, normalize_word

__all__ = [
    "ACTIONS",
    "Action",
    "Entry",
    "GuardSettings",
    "Hit",
    "LexiconSettings",
    "Matcher",
    "Verdict",
    "mask",
    "hit_at",
    "read_lexicon",
    "sort_key",
]

log = logging.getLogger("nobusy.guard")

Action = Literal["block", "mask", "flag"]
Scope = Literal["input", "output", "both"]
ACTIONS: tuple[Action, ...] = ("block", "mask", "flag")  # strongest first
MASK_CHAR = "\uff0a"  # ＊, full width so a masked CJK word keeps its width on screen


class LexiconSettings(BaseModel):
    """One word list and what to do when one of its words is found."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(
        description="UTF-8 file, one word per line, optional category after a tab; `#` "
        "starts a comment line. Relative to the config file's folder. Reloaded when it changes."
    )
    action: Action = Field(
        description="`block` refuses the request or ends the answer (finish_reason "
        "content_filter); `mask` replaces the word with ＊; `flag` only reports it."
    )
    scope: Scope = Field(
        "both", description="Check the request (`input`), the answer (`output`) or `both`."
    )


class GuardSettings(BaseModel):
    """Sensitive-word filtering of requests and answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lexicons: tuple[LexiconSettings, ...] = Field(
        (), description="Word lists; when several find words, block > mask > flag."
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """A lexicon word as written, where it came from and what finding it does."""

    word: str
    lexicon: str
    category: str | None
    action: Action


@dataclass(frozen=True, slots=True)
class Hit:
    """A word found: ``text[start:end]`` (original offsets) is ``matched``."""

    start: int
    end: int
    matched: str
    word: str
    lexicon: str
    category: str | None
    action: Action


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of checking a whole text: ``text`` has mask and block words masked."""

    blocked: bool
    text: str
    hits: list[Hit]


def read_lexicon(path: Path) -> list[tuple[str, str | None]]:
    """(word, category) pairs of a lexicon file; raises ``ConfigError`` naming the file."""
    try:
        # utf-8-sig: editors on Windows start files with a BOM, which would hide a first "#".
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        number = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"lexicon {path}: not UTF-8 at line {number}: {exc.reason}") from None
    except OSError as exc:
        raise ConfigError(f"lexicon {path}: cannot read it: {exc.strerror or exc}") from None
    pairs: list[tuple[str, str | None]] = []
    for line in raw.splitlines():
        word, _, category = line.partition("\t")
        word = word.strip()
        if word and not word.startswith("#"):
            pairs.append((word, category.strip() or None))
    return pairs


def mask(text: str, spans: Iterable[tuple[int, int]], offset: int = 0) -> str:
    """``text`` with each span (offsets minus ``offset``) replaced by as many ＊ as code points."""
    parts: list[str] = []
    done = 0
    for start, end in sorted(spans):
        low, high = max(start - offset, done), min(end - offset, len(text))
        if low < high:  # spans may overlap (a mask word inside a block word): mask once
            parts += (text[done:low], MASK_CHAR * (high - low))
            done = high
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


class _Group:
    """The words of one action: their automaton and, per pattern id, the entry."""

    __slots__ = ("automaton", "entries")

    def __init__(self, patterns: dict[str, Entry]) -> None:
        self.entries = list(patterns.values())
        self.automaton = ahocorasick_rs.AhoCorasick(
            list(patterns),
            matchkind=ahocorasick_rs.MatchKind.LeftmostLongest,
            # Measured on 10,000 CJK words: the contiguous NFA matched ~2× faster than the
            # default choice and builds as fast; the DFA took 4× longer to build, no faster.
            implementation=ahocorasick_rs.Implementation.ContiguousNFA,
        )


class Matcher:
    """The compiled words of some lexicons; immutable, so it is swapped whole on reload."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        by_action: dict[Action, dict[str, Entry]] = {action: {} for action in ACTIONS}
        strongest: dict[str, Action] = {}
        empty = 0
        for entry in entries:
            key = normalize_word(entry.word)
            if not key:
                empty += 1
                continue
            held = strongest.get(key)
            if held is not None and ACTIONS.index(held) <= ACTIONS.index(entry.action):
                continue  # first listed wins among equals; a stronger action replaces it
            if held is not None:
                del by_action[held][key]
            strongest[key] = entry.action
            by_action[entry.action][key] = entry
        if empty:
            log.warning("guard: %d lexicon words have no letters or digits; skipped", empty)
        self.groups: dict[Action, _Group] = {
            action: _Group(patterns) for action, patterns in by_action.items() if patterns
        }
        self.words = len(strongest)
        # A word can end at most this far (in normalized characters) past where it starts.
        self.longest = max(map(len, strongest), default=0)

    @property
    def empty(self) -> bool:
        """Whether there is no word at all (then nothing needs checking)."""
        return not self.groups

    def find(self, haystack: str) -> list[tuple[int, int, Entry]]:
        """Leftmost-longest matches per action in normalized ``haystack``, as (start, end,
        entry), ordered by ``sort_key``."""
        found: list[tuple[int, int, Entry]] = []
        for group in self.groups.values():
            entries = group.entries
            for pattern, low, high in group.automaton.find_matches_as_indexes(haystack):
                found.append((low, high, entries[pattern]))
        if len(self.groups) > 1:
            found.sort(key=sort_key)
        return found

    def check(self, text: str) -> Verdict:
        """Find every word in a whole ``text``."""
        if not self.groups:
            return Verdict(False, text, [])
        normalized = normalize(text)
        hits = [
            hit_at(text, 0, *normalized.span(low, high), entry)
            for low, high, entry in self.find(normalized.text)
        ]
        masked = mask(text, ((h.start, h.end) for h in hits if h.action != "flag"))
        return Verdict(any(h.action == "block" for h in hits), masked, hits)


def sort_key(match: tuple[int, int, Entry]) -> tuple[int, int, int]:
    """Matches of several actions in one order: by start, then strongest, then end."""
    return match[0], ACTIONS.index(match[2].action), match[1]


def hit_at(text: str, offset: int, start: int, end: int, entry: Entry) -> Hit:
    """A ``Hit`` for original span [start, end) of ``text``, which begins at ``offset``."""
    matched = text[start - offset : end - offset]
    return Hit(start, end, matched, entry.word, entry.lexicon, entry.category, entry.action)
