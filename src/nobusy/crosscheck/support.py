"""Cross-source support: how far each sentence of an answer is said by the other answers too,
as the highest cosine between its embedding and any sentence of another answer.

A promotional sentence is usually the least-supported sentence of its answer (field notes,
and ``python -m bench --only crosscheck``). Embeddings come from a model shipped in a wheel
(``nobusy.knowledge.embedder``); without one, character-bigram cosines stand in.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from nobusy.crosscheck.spans import Sentence, sentences
from nobusy.knowledge.embedder import Embedder

__all__ = ["SentenceSupport", "bigram_vectors", "embed_sentences", "support"]


@dataclass(slots=True)
class SentenceSupport:
    """``support`` is the best cosine to a sentence of another answer (0 when alone);
    ``relative`` is how far below or above its answer's mean it lies, in standard deviations;
    ``only_this_source`` is set by the detector from its model's threshold."""

    sentence: Sentence
    support: float
    relative: float
    only_this_source: bool = False


def bigram_vectors(texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """L2-normalised character-bigram counts, hashed into 4,096 buckets (the fallback)."""
    rows = np.zeros((len(texts), 4096), dtype=np.float32)
    for i, text in enumerate(texts):
        folded = text.lower()
        for gram, count in Counter(folded[j : j + 2] for j in range(len(folded) - 1)).items():
            rows[i, hash(gram) % 4096] += count
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.asarray(rows / np.maximum(norms, 1e-12), dtype=np.float32)


def embed_sentences(answer: str, embedder: Embedder | None) -> npt.NDArray[np.float32]:
    """The vectors of ``answer``'s sentences, one row each (done as each answer arrives, so
    that only the last one is embedded after the slowest source has answered)."""
    texts = [s.text for s in sentences(answer)]
    if not texts:
        return np.zeros((0, embedder.dimensions if embedder else 4096), dtype=np.float32)
    return embedder.embed(texts, query=False) if embedder is not None else bigram_vectors(texts)


def support(
    answers: Sequence[str],
    embedder: Embedder | None = None,
    vectors: Sequence[npt.NDArray[np.float32] | None] | None = None,
) -> list[list[SentenceSupport]]:
    """For each answer, its sentences with their support from the other answers;
    ``vectors`` may hold some answers' sentence vectors (``embed_sentences``) already."""
    parts = [sentences(a) for a in answers]
    texts = [s.text for p in parts for s in p]
    owner = np.array([i for i, p in enumerate(parts) for _ in p], dtype=np.int32)
    if not texts:
        return [[] for _ in answers]
    given = list(vectors) if vectors is not None else [None] * len(answers)
    rows = [
        v if v is not None and len(v) == len(p) else embed_sentences(a, embedder)
        for a, p, v in zip(answers, parts, given, strict=True)
    ]
    matrix = np.concatenate(rows, axis=0)
    cosines = matrix @ matrix.T
    out: list[list[SentenceSupport]] = []
    row = 0
    for i, part in enumerate(parts):
        others = owner != i
        best = [
            float(cosines[row + k][others].max()) if others.any() else 0.0 for k in range(len(part))
        ]
        mean = sum(best) / len(best) if best else 0.0
        spread = math.sqrt(sum((b - mean) ** 2 for b in best) / len(best)) if best else 0.0
        out.append(
            [
                SentenceSupport(s, b, (b - mean) / spread if spread > 1e-6 else 0.0)
                for s, b in zip(part, best, strict=True)
            ]
        )
        row += len(part)
    return out
