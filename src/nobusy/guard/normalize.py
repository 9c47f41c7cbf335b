"""Evasion-resistant text normalization whose every output character maps back to the input.

Each code point is folded on its own, so normalizing a text piece by piece gives exactly what
normalizing it whole gives (the stream filter depends on that). The fold, in order:

1. NFKD compatibility decomposition: full-width → half-width, ligatures, circled and
   super/subscript forms, CJK compatibility ideographs and Kangxi radicals → unified ones.
2. Dropped: spaces (Z*), punctuation (P*), symbols (S*, emoji too), controls, format and
   zero-width characters (C*: U+200B..U+200D, U+2060, U+FEFF, soft hyphen...), private-use and
   unassigned code points, combining marks (Mn, Me: accents, variation selectors) and the
   blank-looking Hangul fillers. So ``é``, ``e`` + U+0301 and ``e`` all become ``e``.
3. Homoglyphs: Cyrillic, Greek and a few Latin look-alikes of Latin letters → Latin,
   before decomposition and before and after case folding (Greek ``Ν`` looks like N, its
   lower case ``ν`` like v; lunate sigma ``ϲ`` looks like c but decomposes to ``ς``); then
   every other letter that Unicode's confusables table (UTS #39, via the
   ``confusable-homoglyphs`` package) says looks like one Latin letter: Latin iota ``Ɩ``,
   Cherokee ``Ꮮ``, Lisu, Coptic... Right-to-left letters are left alone: they do not sit
   inside a Latin word on screen.
4. Case folding (``str.casefold``: ``ß`` → ``ss``).
5. Traditional → simplified Chinese, character by character, from OpenCC's ``t2s`` tables.
   OpenCC's phrase step is left out on purpose: it depends on neighbouring characters.

Digits are never read as letters (0→o, 1→l, 4→a...): lexicons hold numbers (dates such as
8964), and digits mean themselves far more often than they disguise letters.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from importlib.resources import files
from types import MappingProxyType

import orjson

__all__ = [
    "BIDI_CONTROLS",
    "HOMOGLYPHS",
    "Normalized",
    "fold_char",
    "normalize",
    "normalize_word",
    "strip_bidi",
]

# Look-alikes of Latin letters in other scripts, as drawn in common fonts. Upper case maps to
# upper case so that case folding afterwards treats both alike.
HOMOGLYPHS: Mapping[str, str] = MappingProxyType({
    # Cyrillic capitals
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P",
    "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q", "Ԝ": "W",
    "Ү": "Y", "Һ": "H", "Ӏ": "I",
    # Cyrillic small letters
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "ѕ": "s", "і": "i",
    "ј": "j", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ԁ": "d", "ү": "y", "ѵ": "v",
    # Greek capitals
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C", "Ϳ": "J",
    # Greek small letters
    "α": "a", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    "ϲ": "c", "ϳ": "j", "ϱ": "p",
    # Latin letters that pass for others
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ʀ": "r", "ʏ": "y", "ɪ": "i", "ʟ": "l", "ɴ": "n",
    "ᴏ": "o",
    # Armenian
    "օ": "o", "ո": "n", "ս": "u", "հ": "h", "զ": "q",
})  # fmt: skip

# Embeddings, overrides and isolates reorder what is displayed: "\u202ekcalb" shows as "black".
# Matching drops them (category Cf) and reads the stored order; ``strip_bidi`` takes them out
# of the text that passes, so what is shown is the order that was checked.
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_BIDI = re.compile(f"[{BIDI_CONTROLS}]")

# Default-ignorable letters that render as blank space yet are category Lo.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")
_DROPPED_CATEGORIES = frozenset(
    ["Zs", "Zl", "Zp", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So"]
    + ["Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me"]
)
# Where OpenCC's t2s tables map anything: the CJK ideograph blocks (compatibility ideographs
# are already unified by NFKD, but scanning them costs little).
_CJK_BLOCKS = (
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2EBEF),
    (0x2F800, 0x2FA1F),
    (0x30000, 0x3134F),
)
# Unassigned, private-use and surrogate code points (~970,000 of them) are dropped without
# being remembered, so a text full of them cannot grow the tables past the assigned characters.
_UNCACHED = frozenset(["Cn", "Co", "Cs"])
_DROP = "\x00"  # what a dropped character becomes before the final removal (itself dropped)
_SPECIAL = re.compile("[^\x01]")  # in the kinds string: a character not mapped one to one


@cache
def _t2s() -> dict[str, str]:
    """Traditional → simplified for single characters, read from OpenCC once (~20 ms)."""
    import opencc  # imported here: importing this module does nothing

    chars = [chr(c) for low, high in _CJK_BLOCKS for c in range(low, high + 1)]
    # One character per line, so OpenCC's phrase segmentation sees each character alone.
    converted = str(opencc.OpenCC("t2s").convert("\n".join(chars))).split("\n")
    if len(converted) != len(chars):  # never seen; better no conversion than a shifted one
        return {}
    table = {t: s for t, s in zip(chars, converted, strict=True) if t != s and len(s) == 1}
    # A few entries chain (薴 → 苧 → 苎); follow them so a folded word folds to itself.
    for t, s in table.items():
        seen = {t}
        while s in table and s not in seen:
            seen.add(s)
            s = table[s]
        table[t] = s
    return table


@cache
def _confusables() -> dict[str, str]:
    """Single letters that Unicode's confusables table maps to one Latin letter (~1,200)."""
    # Only the package's data is used, read here: importing this module does nothing.
    data = files("confusable_homoglyphs").joinpath("confusables.json").read_bytes()
    table: dict[str, str] = {}
    for target, entries in orjson.loads(data).items():
        if not (target.isascii() and target.isalpha()):
            continue
        for entry in entries:
            char = entry["c"].strip("\u200e\u200f")  # the table wraps RTL forms in marks
            if (
                len(char) == 1
                and not char.isascii()  # ASCII means itself: digits are never letters
                and unicodedata.category(char)[0] == "L"
                and unicodedata.bidirectional(char) not in ("R", "AL")
            ):
                table.setdefault(char, target)
    return table


def _kept(c: str) -> bool:
    return c not in _BLANK_LETTERS and unicodedata.category(c) not in _DROPPED_CATEGORIES


def fold_char(char: str) -> str:
    """What one code point becomes: zero, one or (rarely, e.g. ``ß``, ``⑩``) more characters."""
    t2s = _t2s()
    confusables = _confusables()

    def lookalike(c: str) -> str:
        return HOMOGLYPHS.get(c) or confusables.get(c, c)

    out: list[str] = []
    # Look-alikes first too: some decompose into other letters (lunate sigma ϲ → ς).
    for c in unicodedata.normalize("NFKD", lookalike(char)):
        if not _kept(c):
            continue
        for folded in lookalike(c).casefold():
            # Lower case again: a look-alike may be a capital (Cherokee ꮮ folds to Ꮮ, like L).
            for final in lookalike(folded).casefold():
                if _kept(final):
                    out.append(t2s.get(final, final))
    return "".join(out)


class _Marks(dict[int, str]):
    """``str.translate`` table filled on first sight of each code point: dropped → NUL."""

    def __missing__(self, code: int) -> str:
        value = fold_char(chr(code)) or _DROP
        if unicodedata.category(chr(code)) not in _UNCACHED:
            self[code] = value
        return value


class _Kinds(dict[int, str]):
    """``str.translate`` table: each code point → chr(how many characters it folds to)."""

    def __missing__(self, code: int) -> str:
        value = chr(len(fold_char(chr(code))))
        if unicodedata.category(chr(code)) not in _UNCACHED:
            self[code] = value
        return value


_MARKS = _Marks()
_KINDS = _Kinds()


class Normalized:
    """A normalized text and, for each of its characters, the input offset it came from."""

    __slots__ = ("text", "_source", "_marked", "_offset", "_index", "_breaks")

    def __init__(self, text: str, source: str, marked: str, offset: int) -> None:
        self.text = text
        self._source = source
        self._marked = marked
        self._offset = offset
        self._index: list[int] | None = None
        self._breaks: tuple[list[int], list[int], list[int]] | None = None

    @property
    def index(self) -> list[int]:
        """``index[i]`` is the input offset (plus ``offset``) of ``text[i]``."""
        if self._index is None:
            self._index = _build_index(self._specials(), len(self._source), self._offset)
        return self._index

    def origin(self, position: int) -> int:
        """``index[position]``, without building the index (clean text never needs it)."""
        if self._index is not None:
            return self._index[position]
        if self._breaks is None:
            self._breaks = _breaks(self._specials())
        starts, sources, widths = self._breaks
        j = bisect_right(starts, position) - 1
        if j < 0:  # before anything was dropped or expanded
            return position + self._offset
        if position < starts[j] + widths[j]:  # inside what one input character expanded to
            return sources[j] + self._offset
        return sources[j] + 1 + position - starts[j] - widths[j] + self._offset

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The input span (``offset`` added) that normalized ``text[start:end]`` came from."""
        return self.origin(start), self.origin(end - 1) + 1

    def _specials(self) -> Iterator[tuple[int, int]]:
        """(input position, output length) of each character not mapped one to one."""
        if len(self._marked) == len(self._source):  # nothing expanded: only drops are special
            return ((m.start(), 0) for m in re.finditer(_DROP, self._marked))
        kinds = self._source.translate(_KINDS)
        return ((m.start(), ord(m.group())) for m in _SPECIAL.finditer(kinds))


def _build_index(specials: Iterable[tuple[int, int]], length: int, offset: int) -> list[int]:
    index: list[int] = []
    extend = index.extend
    previous = 0
    for position, width in specials:
        extend(range(previous + offset, position + offset))
        if width:
            extend([position + offset] * width)
        previous = position + 1
    extend(range(previous + offset, length + offset))
    return index


def _breaks(specials: Iterable[tuple[int, int]]) -> tuple[list[int], list[int], list[int]]:
    """Per special input character: where its output starts, where it is, its output length;
    between two of them input and output advance together."""
    starts: list[int] = []
    sources: list[int] = []
    widths: list[int] = []
    shift = 0  # output position minus input position so far
    for position, width in specials:
        starts.append(position + shift)
        sources.append(position)
        widths.append(width)
        shift += width - 1
    return starts, sources, widths


def normalize(text: str, offset: int = 0) -> Normalized:
    """Fold ``text`` for matching; ``offset`` is added to every index (a piece of a stream)."""
    # One C-level translate does the folding; dropped characters become NUL and go in one
    # replace, which keeps the common path at a few nanoseconds per character.
    marked = text.translate(_MARKS)
    return Normalized(marked.replace(_DROP, ""), text, marked, offset)


def strip_bidi(text: str) -> str:
    """``text`` without embedding, override and isolate controls (a search first: most text
    has none)."""
    return _BIDI.sub("", text) if _BIDI.search(text) else text


def normalize_word(word: str) -> str:
    """A lexicon word folded the same way as the text it is matched against."""
    return normalize(word).text
