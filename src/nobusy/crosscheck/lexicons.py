"""The cross-check's word lists (the ``lexicons/`` data files) compiled into Aho-Corasick
automata, one per kind, matched case-insensitively with original offsets kept."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import ahocorasick_rs

__all__ = ["KINDS", "Lexicons", "fold", "lexicons"]

# File stem -> what a word of it is.
KINDS = (
    "brands",
    "superlatives",
    "cta",
    "incentives",
    "contact_labels",
    "bodies",
    "public_numbers",
    "product_nouns",
)


def fold(text: str) -> str:
    """``text`` lower-cased character by character, so offsets into it are offsets into
    ``text`` (``str.lower`` may lengthen a character, as "İ" becomes two)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c if len(low := c.lower()) != 1 else low for c in text)


@dataclass(frozen=True, slots=True)
class _List:
    words: list[str]
    tags: list[str | None]
    automaton: ahocorasick_rs.AhoCorasick

    def find(self, folded: str) -> list[tuple[int, int, str, str | None]]:
        """(start, end, word, tag) of leftmost-longest matches in folded text."""
        return [
            (start, end, self.words[i], self.tags[i])
            for i, start, end in self.automaton.find_matches_as_indexes(folded)
        ]


class Lexicons:
    """Every word list of the cross-check, compiled once."""

    def __init__(self, lists: dict[str, list[tuple[str, str | None]]]) -> None:
        self.lists: dict[str, _List] = {}
        self.family: dict[str, str] = {}
        self.written: dict[str, str] = {}  # folded brand -> as written in its list
        for kind, pairs in lists.items():
            seen: dict[str, str | None] = {}
            for word, tag in pairs:
                seen.setdefault(fold(word), tag)
            words = list(seen)
            self.lists[kind] = _List(
                words,
                list(seen.values()),
                ahocorasick_rs.AhoCorasick(
                    words, matchkind=ahocorasick_rs.MatchKind.LeftmostLongest
                ),
            )
            if kind == "brands":
                self.family = {w: t for w, t in seen.items() if t}
                self.written = {fold(w): w for w, _ in pairs}

    def find(self, kind: str, folded: str) -> list[tuple[int, int, str, str | None]]:
        """Matches of list ``kind`` in ``folded`` (a ``fold``-ed text)."""
        return self.lists[kind].find(folded)

    def families_in(self, folded: str) -> set[str]:
        """The brand families a (folded) text names, through any member."""
        return {tag for *_, tag in self.find("brands", folded) if tag}


def _read(kind: str) -> list[tuple[str, str | None]]:
    raw = resources.files("nobusy.crosscheck").joinpath(f"lexicons/{kind}.txt").read_text("utf-8")
    pairs: list[tuple[str, str | None]] = []
    for line in raw.splitlines():
        word, _, tag = line.partition("\t")
        if word.strip() and not word.startswith("#"):
            pairs.append((word.strip(), tag.strip() or None))
    return pairs


@functools.cache
def lexicons() -> Lexicons:
    """The shipped word lists, read and compiled on first use."""
    return Lexicons({kind: _read(kind) for kind in KINDS})
