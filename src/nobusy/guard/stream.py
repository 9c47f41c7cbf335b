"""The output filter: checks an answer as it streams, finding words split across chunks.

It holds back only what a word still being spelled out could need: everything from the
first normalized position where a match could still start (``longest - 1`` normalized
characters before the end), including the spaces, zero-width and other dropped characters
around it, and releases the rest at once. Its hits and masked text are exactly those of
checking the whole answer at once (a property test holds it to that).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from nobusy.guard.lexicon import Entry, Hit, Matcher, hit_at, mask, sort_key
from nobusy.guard.normalize import normalize

__all__ = ["FilterStep", "StreamFilter"]


@dataclass(frozen=True, slots=True)
class FilterStep:
    """What one piece of an answer allows: ``text`` may go to the client now (masked).

    Once ``blocked``, ``text`` ends right before the blocked word; send it, then end the
    stream with ``finish_reason: "content_filter"`` and release nothing more.
    """

    text: str = ""
    hits: list[Hit] = field(default_factory=list)
    blocked: bool = False


class StreamFilter:
    """Feed an answer piece by piece; each step says what may be released and what was found."""

    def __init__(self, matcher: Matcher) -> None:
        self._matcher = matcher
        self._holdback = max(matcher.longest - 1, 0)
        self._pending = ""  # original text not yet released; it starts at self._base
        self._base = 0
        self._norm = ""  # self._pending normalized...
        self._index: list[int] = []  # ...and each of its characters' original offsets
        # Per action, where in self._norm its next match may start.
        self._scans = {action: 0 for action in matcher.groups}
        self._masks: list[tuple[int, int]] = []  # original spans still to mask on release
        self._blocked = False

    @property
    def blocked(self) -> bool:
        """Whether a block word was found: the answer must end, nothing more is released."""
        return self._blocked

    def feed(self, piece: str) -> FilterStep:
        """Take the next piece of the answer."""
        if self._blocked:
            return FilterStep(blocked=True)
        if not self._matcher.groups:
            return FilterStep(piece)
        end = self._base + len(self._pending)
        normalized = normalize(piece, end)
        self._pending += piece
        self._norm += normalized.text
        if normalized.text:
            self._index += normalized.index
        # A match starting before `decided` has all the characters its longest word needs.
        return self._advance(len(self._norm) - self._holdback)

    def finish(self) -> FilterStep:
        """The answer has ended: check and release what was held back."""
        if self._blocked:
            return FilterStep(blocked=True)
        if not self._matcher.groups:
            return FilterStep()
        return self._advance(len(self._norm) + 1)

    def _advance(self, decided: int) -> FilterStep:
        """Report matches that start before ``decided``, then release what no match can reach."""
        found: list[tuple[int, int, Entry]] = []
        for action, group in self._matcher.groups.items():
            scan = self._scans[action]
            if decided <= scan:
                continue  # nothing new can be certain yet
            # Each action keeps its own leftmost-longest sequence, as checking the whole does.
            tail = self._norm[scan:] if scan else self._norm
            for pattern, low, high in group.automaton.find_matches_as_indexes(tail):
                if low + scan >= decided:
                    break  # it may yet grow, or lose to a match that starts earlier
                found.append((low + scan, high + scan, group.entries[pattern]))
                self._scans[action] = high + scan
            self._scans[action] = max(self._scans[action], decided)
        if len(self._matcher.groups) > 1:
            found.sort(key=sort_key)
        hits: list[Hit] = []
        for low, high, entry in found:
            start, stop = self._index[low], self._index[high - 1] + 1
            hits.append(hit_at(self._pending, self._base, start, stop, entry))
            if entry.action == "block":
                # Hits up to this one, and the clean text before it; the stream ends here.
                self._blocked = True
                return FilterStep(self._release(start), hits, True)
            if entry.action == "mask":
                self._masks.append((start, stop))
        scan = min(self._scans.values())
        cut = self._index[scan] if scan < len(self._norm) else self._base + len(self._pending)
        return FilterStep(self._release(cut), hits)

    def _release(self, cut: int) -> str:
        """Masked original text up to offset ``cut``, dropped from what is held."""
        size = cut - self._base
        if size <= 0:
            return ""
        text = mask(self._pending[:size], self._masks, self._base)
        self._masks = [span for span in self._masks if span[1] > cut]
        self._pending = self._pending[size:]
        self._base = cut
        # Normalized characters of released input go too; one input character that folded to
        # several may straddle the cut, and then all of it stays.
        drop = bisect_left(self._index, cut)
        if drop:
            self._norm = self._norm[drop:]
            del self._index[:drop]
            for action in self._scans:
                self._scans[action] -= drop
        return text
