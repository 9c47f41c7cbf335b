"""Cutting a document's text into overlapping chunks at its structure, with offsets.

A chunk never crosses a markdown heading, ends at a paragraph or sentence end where it can
(Chinese 。！？；, English . ! ? before a space, a line end), and repeats the last sentences of
the chunk before it, up to ``overlap`` characters, so a passage cut in two is whole in one of
them. A sentence longer than ``size`` is cut at ``size`` characters, at a space or a comma when
one is near. Every chunk's text is ``text[start:end]``: citations point into the original.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Chunk", "chunk"]


@dataclass(frozen=True)
class Chunk:
    """A span of a document: its text, offsets into the document, and its heading path."""

    text: str
    start: int
    end: int
    heading: str = ""

    @property
    def context(self) -> str:
        """The text embedded and searched: the heading path, then the chunk itself."""
        if not self.heading or self.text.lstrip("# ").startswith(self.heading.split(" > ")[-1]):
            return self.text
        return f"{self.heading}\n{self.text}"


_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
# A sentence ends after Chinese or full-width end marks (with closing quotes or brackets after
# them), after . ! ? ; followed by a space, or at a line end. A blank line ends a paragraph.
_SENTENCE_END = re.compile(
    r"[。！？；!?;][”’\"'）)」』】]*"
    r"|(?<=[.!?])[\"')\]]*(?=\s)"
    r"|\n"
)
_SOFT_BREAK = re.compile(r"[\s，,、：:]")


def chunk(text: str, *, size: int, overlap: int) -> list[Chunk]:
    """Cut ``text`` into chunks of at most ``size`` characters, overlapping by up to ``overlap``."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError("chunk: need size > 0 and 0 <= overlap < size")
    out: list[Chunk] = []
    for heading, start, end in _sections(text):
        units = list(_units(text, start, end, size, overlap))
        out.extend(_pack(text, units, heading, size, overlap))
    return out


def _sections(text: str) -> Iterator[tuple[str, int, int]]:
    """(heading path, start, end) of each part of ``text`` between markdown headings."""
    path: list[tuple[int, str]] = []
    start = body = 0
    heading = ""
    for match in _HEADING.finditer(text):
        # A heading straight above another one is only part of the path, not a chunk.
        if text[body : match.start()].strip():
            yield heading, start, match.start()
        level = len(match.group(1))
        path = [(lvl, title) for lvl, title in path if lvl < level] + [(level, match.group(2))]
        heading = " > ".join(title for _, title in path)
        start, body = match.start(), match.end()
    if text[body:].strip():
        yield heading, start, len(text)


def _units(text: str, start: int, end: int, size: int, overlap: int) -> Iterator[tuple[int, int]]:
    """Sentences of ``text[start:end]`` as trimmed spans, none longer than ``size``."""
    pos = start
    for match in _SENTENCE_END.finditer(text, start, end):
        yield from _trimmed_pieces(text, pos, match.end(), size, overlap)
        pos = match.end()
    yield from _trimmed_pieces(text, pos, end, size, overlap)


def _trimmed_pieces(
    text: str, start: int, end: int, size: int, overlap: int
) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        return
    while end - start > size:
        cut = _soft_cut(text, start, start + size)
        yield start, cut
        # A sentence cut in pieces overlaps too, or a phrase at the cut is lost to both.
        start = max(cut - overlap, start + 1)
        # Start the overlap at a word, not inside one.
        while start < cut and text[start - 1].isalnum() and text[start].isascii():
            start += 1
        while start < end and text[start].isspace():
            start += 1
    yield start, end


def _soft_cut(text: str, start: int, limit: int) -> int:
    """The last space or comma in the final fifth of ``text[start:limit]``, else ``limit``."""
    floor = limit - max((limit - start) // 5, 1)
    for i in range(limit - 1, floor, -1):
        if _SOFT_BREAK.match(text[i]):
            return i + 1
    return limit


def _pack(
    text: str, units: list[tuple[int, int]], heading: str, size: int, overlap: int
) -> Iterator[Chunk]:
    """Greedily join sentences into chunks; each new chunk starts with the last few sentences
    of the one before, up to ``overlap`` characters."""
    i = 0
    while i < len(units):
        first = i
        start = units[i][0]
        j = i
        while j + 1 < len(units) and (
            units[j + 1][1] - start <= size
            # A heading line goes with the sentence under it, even past ``size``.
            or (j == 0 and _HEADING.fullmatch(text, units[0][0], units[0][1]) is not None)
        ):
            j += 1
        end = units[j][1]
        yield Chunk(text[start:end], start, end, heading)
        if j + 1 >= len(units):
            return
        # Back up over whole sentences that fit in the overlap, but always move forward.
        k = j + 1
        while k - 1 > first and end - units[k - 1][0] <= overlap:
            k -= 1
        i = k
