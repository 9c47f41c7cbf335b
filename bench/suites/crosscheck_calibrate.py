"""Calibrate the cross-check's scoring model on the dev split (never the held-out one) and
write ``src/nobusy/crosscheck/weights.json``: ``python -m bench.suites.crosscheck_calibrate``.

A logistic regression (L2, gradient descent, numpy) over the features of
``nobusy.crosscheck.scoring``; the promotional threshold is the one with the best answer-level
F1 on dev, the suspect threshold half of it. ``only_below`` (support under which a sentence is
"only this source") is the 15th percentile of every dev sentence's support, per embedder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.crosscheck_data import load
from nobusy.crosscheck.detector import Source, score_inputs
from nobusy.crosscheck.scoring import FEATURES
from nobusy.crosscheck.support import support
from nobusy.knowledge.embedder import load_embedder

__all__ = ["calibrate", "fit"]

WEIGHTS = Path(__file__).resolve().parents[2] / "src" / "nobusy" / "crosscheck" / "weights.json"
EMBEDDERS = ("bigram", "use-multilingual")
_CROSS_ONLY = ("lone_brand", "low_support", "only_here")


def fit(rows: list[dict[str, float]], labels: list[bool], names: tuple[str, ...]) -> dict[str, Any]:
    """Weights and thresholds for ``names`` (the other features weigh 0)."""
    x = np.array([[r[n] for n in names] for r in rows], dtype=np.float64)
    y = np.array(labels, dtype=np.float64)
    w = np.zeros(len(names))
    for _ in range(4000):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) / len(y) + 0.01 * np.where(np.array(names) == "bias", 0, w)
        w -= 0.5 * grad
    p = 1 / (1 + np.exp(-(x @ w)))
    best = (0.0, 0.5)
    for t in np.arange(0.2, 0.81, 0.02):
        pred = p >= t
        tp = float((pred & (y == 1)).sum())
        f1 = 2 * tp / (pred.sum() + y.sum()) if pred.sum() + y.sum() else 0.0
        if f1 > best[0] + 1e-9:
            best = (f1, float(t))
    return {
        "weights": {n: round(float(v), 4) for n, v in zip(names, w, strict=True)},
        "promotional_at": round(best[1], 2),
        "suspect_at": round(best[1] / 2, 2),
        "dev_f1": round(best[0], 4),
    }


def calibrate() -> dict[str, Any]:
    """Fit every model on dev and return the weights file's content."""
    questions = load("dev")
    out: dict[str, Any] = {"cross": {}}
    for name in EMBEDDERS:
        embedder = None if name == "bigram" else load_embedder(name)
        all_supports = []
        for q in questions:
            all_supports.append(support([a.text for a in q.answers], embedder))
        every = [s.support for sup in all_supports for part in sup for s in part]
        only_below = float(np.percentile(every, 15))
        rows: list[dict[str, float]] = []
        labels: list[bool] = []
        for q, sup in zip(questions, all_supports, strict=True):
            sources = [Source(a.text, a.host) for a in q.answers]
            for a, scored in zip(
                q.answers, score_inputs(q.question, sources, sup, only_below, q.lang), strict=True
            ):
                rows.append(scored.x)
                labels.append(a.promotional)
        if "single" not in out:
            single = tuple(f for f in FEATURES if f not in _CROSS_ONLY)
            out["single"] = fit(rows, labels, single)
        out["cross"][name] = {**fit(rows, labels, FEATURES), "only_below": round(only_below, 4)}
    return out


if __name__ == "__main__":
    weights = calibrate()
    WEIGHTS.write_text(json.dumps(weights, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(weights, indent=2))
