"""What the cross-check reports about a stretch of an answer (a ``Flag``), and the sentences
of an answer with their offsets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "PROMO_TYPES",
    "Flag",
    "FlagType",
    "Sentence",
    "Severity",
    "overlaps",
    "resolve",
    "sentences",
]

FlagType = Literal[
    "brand_not_asked",
    "call_to_action",
    "contact_or_purchase_path",
    "incentive",
    "superlative",
    "self_preferencing",
    "unsupported",
]
Severity = Literal["low", "medium", "high"]
# The types that mark words of an answer; ``unsupported`` marks a whole sentence.
PROMO_TYPES: tuple[FlagType, ...] = (
    "contact_or_purchase_path",
    "self_preferencing",
    "call_to_action",
    "incentive",
    "brand_not_asked",
    "superlative",
)


@dataclass(frozen=True, slots=True)
class Flag:
    """``text`` is ``answer[start:end]``, exactly; ``decided_by`` is ``rules`` or ``judge``."""

    start: int
    end: int
    type: FlagType
    severity: Severity
    text: str
    explanation: str = ""
    decided_by: str = "rules"

    def as_dict(self) -> dict[str, object]:
        return {
            "start": self.start,
            "end": self.end,
            "type": self.type,
            "severity": self.severity,
            "text": self.text,
            "explanation": self.explanation,
            "decided_by": self.decided_by,
        }


@dataclass(frozen=True, slots=True)
class Sentence:
    start: int
    end: int
    text: str


# A sentence ends at CJK end punctuation, a newline, or a Latin . ! ? followed by a space.
_END = re.compile(r"[。！？；!?\n]+|(?<=[a-z0-9)\"'])[.!?](?=\s|$)")


def sentences(text: str) -> list[Sentence]:
    """The sentences of ``text`` (trimmed, none empty), with their offsets."""
    out: list[Sentence] = []
    start = 0
    for match in _END.finditer(text):
        _add(out, text, start, match.end())
        start = match.end()
    _add(out, text, start, len(text))
    return out


def _add(out: list[Sentence], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        out.append(Sentence(start, end, text[start:end]))


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def resolve(flags: list[Flag]) -> list[Flag]:
    """Overlapping flags of the word types reduced to one: the earlier type of ``PROMO_TYPES``
    wins (a contact path over the call to action inside it), then the longer span."""
    order = {t: i for i, t in enumerate(PROMO_TYPES)}
    ranked = sorted(flags, key=lambda f: (order.get(f.type, 99), -(f.end - f.start), f.start))
    kept: list[Flag] = []
    for flag in ranked:
        if not any(overlaps((flag.start, flag.end), (k.start, k.end)) for k in kept):
            kept.append(flag)
    return sorted(kept, key=lambda f: f.start)
