"""Language-neutral vectors: each language's mean direction taken out of a multilingual model's.

A multilingual sentence encoder places every text of one language near a shared point, and that
offset carries no meaning: a question in Chinese is a little closer to every Chinese passage
than to any English one, so the English passage that answers it ranks below Chinese passages
that do not. Centring each language's vectors on their own mean removes most of it (Libovický,
Rosa and Fraser, "On the Language Neutrality of Pre-trained Multilingual Representations",
Findings of EMNLP 2020). Here 0.7 of the mean is subtracted (``STRENGTH``) and the row is
normalised again, so a dot product stays the cosine.

The means are not any store's: they are measured once per model over general texts that no
store or evaluation question holds (the cross-check set's answers, ``scripts/language_means.py``)
and shipped in ``language_means.npz``, so a vector never changes after it is written, and
PostgreSQL's HNSW index holds the same vectors as SQLite's. On the shipped evaluation set this
took use-multilingual's hybrid recall@5 from 0.895 to 0.925 (questions in one language about
passages in the other: 0.76 to 0.82); ``STRENGTH`` was chosen on its dev questions
(docs/knowledge.md, "Questions in the other language").

The index applies it to the vectors it stores and to the query vectors it searches with;
``/v1/embeddings`` returns the model's own vectors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib import resources

import numpy as np
import numpy.typing as npt

__all__ = ["LANGUAGES", "STRENGTH", "language", "means", "neutral"]

# The share of the language's mean subtracted, chosen on the eval set's dev questions
# (use-multilingual, hybrid recall@5): 0.913 at 0, 0.927 at 0.3, 0.920 at 0.5, 0.940 at 0.7,
# 0.913 at 1.0.
STRENGTH = 0.7
LANGUAGES = ("zh", "en")
MEANS_FILE = "language_means.npz"

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\uac00-\ud7af]")
_LATIN = re.compile(r"[A-Za-z]")
# A text is Chinese when at least this share of its letters (Han characters and Latin letters)
# are Han: a Chinese passage quoting English terms stays Chinese; an English one naming 年假
# stays English (a Han character carries about as much as a word of five letters).
_HAN_SHARE = 0.2


def language(text: str) -> str | None:
    """``zh``, ``en`` (any Latin-script text) or None (neither, or Japanese/Korean, whose means
    are not measured)."""
    if _KANA_HANGUL.search(text):
        return None
    han = len(_HAN.findall(text))
    latin = len(_LATIN.findall(text))
    if han + latin == 0:
        return None
    return "zh" if han >= _HAN_SHARE * (han + latin) else "en"


@cache
def means(model: str) -> dict[str, npt.NDArray[np.float32]]:
    """The shipped mean vector of each language for ``model`` (empty: none measured)."""
    with resources.files("nobusy.knowledge").joinpath(MEANS_FILE).open("rb") as f:
        stored = np.load(f)
        return {
            lang: np.asarray(stored[f"{model}/{lang}"], dtype=np.float32)
            for lang in LANGUAGES
            if f"{model}/{lang}" in stored.files
        }


def neutral(
    model: str, texts: Sequence[str], vectors: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``vectors`` (one L2-normalised row per text of ``texts``, by ``model``) with ``STRENGTH``
    of each text's language mean taken out, normalised again. Rows of a model without measured
    means, or of a text in neither language, are returned as they are."""
    if len(texts) != len(vectors):
        raise ValueError("neutral: one vector per text")
    table = means(model)
    rows = np.array(vectors, dtype=np.float32, copy=True)
    if not table or not len(rows):
        return rows
    for i, text in enumerate(texts):
        mean = table.get(language(text) or "")
        if mean is not None and mean.shape[0] == rows.shape[1]:
            rows[i] -= STRENGTH * mean
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.asarray(rows / np.maximum(norms, 1e-12), dtype=np.float32)
