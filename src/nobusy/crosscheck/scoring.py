"""The scoring model: an answer's flags (and, in a cross-check, their support from the other
answers) turned into a probability that the answer is promotional, and a verdict.

A logistic model over eleven counts, small enough to read (``weights.json``, written by
``python -m bench.suites.crosscheck_calibrate`` from the dev split only):

- ``contact``, ``cta``, ``incentive``, ``superlative``, ``self``, ``brand``: flags of each
  type, each capped at 3;
- ``kinds``: how many different types were flagged;
- ``lone_brand``: brand or self flags naming something no other answer names;
- ``low_support``: how far the least-supported flagged sentence lies below its answer's mean
  (standard deviations, 0 when above);
- ``only_here``: flagged sentences whose support is under the model's ``only_below``;
- ``bias``: 1.

The single-answer detector uses the ``single`` weights (the last three counts are 0); a
cross-check the ``cross`` weights. ``promotional`` at or above ``promotional_at``, ``suspect``
at or above ``suspect_at``, else ``clean``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from nobusy.crosscheck.spans import Flag

__all__ = ["FEATURES", "Model", "Verdict", "features", "model", "verdict"]

Verdict = Literal["clean", "suspect", "promotional"]

FEATURES = (
    "contact",
    "cta",
    "incentive",
    "superlative",
    "self",
    "brand",
    "kinds",
    "lone_brand",
    "low_support",
    "only_here",
    "bias",
)
_BY_TYPE = {
    "contact_or_purchase_path": "contact",
    "call_to_action": "cta",
    "incentive": "incentive",
    "superlative": "superlative",
    "self_preferencing": "self",
    "brand_not_asked": "brand",
}


@dataclass(frozen=True, slots=True)
class Model:
    """Weights per feature and the two thresholds on the probability."""

    weights: dict[str, float]
    promotional_at: float
    suspect_at: float
    only_below: float = 0.0

    def probability(self, x: dict[str, float]) -> float:
        z = sum(self.weights.get(name, 0.0) * x.get(name, 0.0) for name in FEATURES)
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def verdict(self, p: float) -> Verdict:
        if p >= self.promotional_at:
            return "promotional"
        return "suspect" if p >= self.suspect_at else "clean"


def features(
    flags: Sequence[Flag],
    *,
    lone_brands: int = 0,
    low_support: float = 0.0,
    only_here: int = 0,
) -> dict[str, float]:
    """The model's inputs for one answer."""
    x = {name: 0.0 for name in FEATURES}
    for flag in flags:
        name = _BY_TYPE.get(flag.type)
        if name is not None:
            x[name] = min(3.0, x[name] + 1.0)
    x["kinds"] = float(len({f.type for f in flags if f.type in _BY_TYPE}))
    x["lone_brand"] = float(min(3, lone_brands))
    x["low_support"] = max(0.0, low_support)
    x["only_here"] = float(min(3, only_here))
    x["bias"] = 1.0
    return x


@functools.cache
def model(kind: Literal["single", "cross"], embedder: str = "") -> Model:
    """The shipped calibrated model for the single-answer detector or for a cross-check with
    ``embedder`` (its support scale differs: ``only_below`` is per embedder)."""
    raw = json.loads(
        resources.files("nobusy.crosscheck").joinpath("weights.json").read_text("utf-8")
    )
    entry = raw[kind] if kind == "single" else raw["cross"].get(embedder, raw["cross"]["bigram"])
    return Model(
        {k: float(v) for k, v in entry["weights"].items()},
        float(entry["promotional_at"]),
        float(entry["suspect_at"]),
        float(entry.get("only_below", 0.0)),
    )


def verdict(m: Model, x: dict[str, float]) -> tuple[Verdict, float]:
    """The verdict and probability of one answer's features under model ``m``."""
    p = m.probability(x)
    return m.verdict(p), p
