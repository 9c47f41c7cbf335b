"""The detector: rules, cross-source support and the scoring model put together, for one
answer (``check_answer``) or for several answers to one question (``cross_check``).

An answer judged ``clean`` carries no flags: what the rules found there was too weak to show
(a lone brand everybody else names too, say). Flags keep exact offsets into their answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from nobusy.crosscheck.explain import explain, language_of
from nobusy.crosscheck.lexicons import fold
from nobusy.crosscheck.rules import Context, find_flags
from nobusy.crosscheck.scoring import Verdict, features, model, verdict
from nobusy.crosscheck.spans import Flag
from nobusy.crosscheck.support import SentenceSupport, support
from nobusy.knowledge.embedder import Embedder

__all__ = [
    "AnswerReport",
    "CrossReport",
    "Source",
    "check_answer",
    "cross_check",
    "score_inputs",
]

_BRANDS = ("brand_not_asked", "self_preferencing")


@dataclass
class AnswerReport:
    """One answer's verdict, its probability of being promotional, and its flags."""

    verdict: Verdict
    score: float
    flags: list[Flag]
    sentences: list[SentenceSupport] = field(default_factory=list)
    decided_by: str = "rules"
    judge_explanation: str | None = None

    def as_dict(self, *, with_sentences: bool = False) -> dict[str, object]:
        out: dict[str, object] = {
            "verdict": self.verdict,
            "score": round(self.score, 3),
            "decided_by": self.decided_by,
            "flags": [f.as_dict() for f in self.flags],
        }
        if self.judge_explanation is not None:
            out["judge_explanation"] = self.judge_explanation
        if with_sentences:
            out["sentences"] = [
                {
                    "start": s.sentence.start,
                    "end": s.sentence.end,
                    "support": round(s.support, 3),
                    "only_this_source": s.only_this_source,
                }
                for s in self.sentences
            ]
        return out


@dataclass(frozen=True, slots=True)
class Source:
    """An answer to check and the host platform's own products for its source."""

    text: str
    host: Sequence[str] = ()


@dataclass
class CrossReport:
    """Every answer's report, and the share of sentences some other answer also says."""

    answers: list[AnswerReport]
    agreement: float
    embedder: str


def check_answer(
    answer: str, question: str, *, host: Sequence[str] = (), language: str | None = None
) -> AnswerReport:
    """The single-answer detector: rules and the ``single`` scoring model."""
    lang = language or language_of(question or answer)
    flags = find_flags(answer, Context(question, host, lang))
    judged, p = verdict(model("single"), features(flags))
    return AnswerReport(judged, p, flags if judged != "clean" else [])


@dataclass
class _Scored:
    flags: list[Flag]
    lone: list[Flag]
    only: list[SentenceSupport]
    x: dict[str, float]


def score_inputs(
    question: str,
    sources: Sequence[Source],
    supports: list[list[SentenceSupport]],
    only_below: float,
    language: str,
) -> list[_Scored]:
    """Each answer's flags and the scoring model's inputs, with support from the others."""
    folded = [fold(s.text) for s in sources]
    out = []
    for i, source in enumerate(sources):
        parts = supports[i]
        for s in parts:
            s.only_this_source = s.support < only_below
        context = Context(question, source.host, language)
        flags = find_flags(source.text, context, [p.sentence for p in parts])
        elsewhere = [f for j, f in enumerate(folded) if j != i]
        lone = [
            f for f in flags if f.type in _BRANDS and not any(fold(f.text) in o for o in elsewhere)
        ]
        flagged = [
            p for p in parts if any(p.sentence.start <= f.start < p.sentence.end for f in flags)
        ]
        low = max((-p.relative for p in flagged), default=0.0)
        only = [p for p in flagged if p.only_this_source]
        x = features(flags, lone_brands=len(lone), low_support=low, only_here=len(only))
        out.append(_Scored(flags, lone, only, x))
    return out


def cross_check(
    question: str,
    sources: Sequence[Source],
    *,
    embedder: Embedder | None = None,
    language: str | None = None,
    use_support: bool = True,
    vectors: Sequence[npt.NDArray[np.float32] | None] | None = None,
) -> CrossReport:
    """Check each answer with the rules and with its support from the others
    (``use_support=False``: the rules alone, for comparison)."""
    lang = language or language_of(question or "".join(s.text for s in sources))
    name = embedder.name if embedder is not None else "bigram"
    cross = model("cross", name)
    m = cross if use_support else model("single")
    supports = support([s.text for s in sources], embedder, vectors)
    reports: list[AnswerReport] = []
    for source, parts, scored in zip(
        sources,
        supports,
        score_inputs(question, sources, supports, cross.only_below, lang),
        strict=True,
    ):
        x = scored.x if use_support else features(scored.flags)
        judged, p = verdict(m, x)
        flags = scored.flags
        if judged != "clean" and use_support:
            flags = flags + _unsupported(source.text, scored.lone, scored.only, lang)
        reports.append(AnswerReport(judged, p, flags if judged != "clean" else [], parts))
    every = [s for parts in supports for s in parts]
    agreement = sum(not s.only_this_source for s in every) / len(every) if every else 1.0
    return CrossReport(reports, agreement, name)


def _unsupported(
    text: str, lone: list[Flag], only: list[SentenceSupport], language: str
) -> list[Flag]:
    """A sentence that recommends something no other answer names, and that no other answer
    supports: an ``unsupported`` flag over the sentence."""
    out = []
    for s in only:
        if any(s.sentence.start <= f.start < s.sentence.end for f in lone):
            sentence = s.sentence
            out.append(
                Flag(
                    sentence.start,
                    sentence.end,
                    "unsupported",
                    "low",
                    text[sentence.start : sentence.end],
                    explain("unsupported", sentence.text, language),
                )
            )
    return out
