"""Measure each embedded model's mean vector per language for ``nobusy.knowledge.neutral``.

The texts are the cross-check set's answers (``bench/data/crosscheck``: everyday questions
answered by several providers, in Chinese and English), which no knowledge store or evaluation
question holds. Run ``python scripts/language_means.py`` after adding an embedded model; it
rewrites ``src/nobusy/knowledge/language_means.npz`` with every model it can load.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from nobusy.errors import NobusyError
from nobusy.knowledge.embedder import EMBEDDERS, load_embedder
from nobusy.knowledge.neutral import LANGUAGES, MEANS_FILE, language

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "bench" / "data" / "crosscheck" / f"{name}.jsonl" for name in ("dev", "heldout")]
OUT = ROOT / "src" / "nobusy" / "knowledge" / MEANS_FILE


def texts() -> list[str]:
    """Every distinct answer text of the cross-check set."""
    seen: dict[str, None] = {}
    for path in SOURCES:
        for line in path.read_text().splitlines():
            seen.setdefault(json.loads(line)["text"], None)
    return list(seen)


def main() -> int:
    corpus = texts()
    by_language = {lang: [t for t in corpus if language(t) == lang] for lang in LANGUAGES}
    arrays: dict[str, np.ndarray] = {}
    for model in EMBEDDERS:
        try:
            embedder = load_embedder(model)
        except (ImportError, NobusyError) as exc:
            print(f"{model}: not measured ({exc})", file=sys.stderr)
            continue
        for lang, group in by_language.items():
            vectors = embedder.embed(group, query=False)
            arrays[f"{model}/{lang}"] = vectors.mean(axis=0).astype(np.float32)
            print(f"{model}/{lang}: mean of {len(group)} texts")
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
