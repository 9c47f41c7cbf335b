"""The order to try an alias's routes in: tiers first, then power of two choices within a tier.

Within a tier, two routes are drawn at random (by weight) and the one with the lower expected
wait goes first (Mitzenmacher's power of two choices over an EWMA of time to first token and
requests in flight); the rest of the tier follows by the same score. Routes whose circuit is
open are left out and reported, so the caller can name them and compute Retry-After.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from nobusy.routing.stats import UpstreamStats
from nobusy.settings import Route

__all__ = ["plan_routes"]


def plan_routes(
    routes: Sequence[Route], stats: Mapping[str, UpstreamStats], rng: random.Random
) -> tuple[list[Route], list[Route]]:
    """Split routes into (usable routes in the order to try them, routes skipped as open)."""
    usable = [r for r in routes if stats[r.upstream].circuit.available()]
    skipped = [r for r in routes if r not in usable]
    ordered: list[Route] = []
    for tier in sorted({r.tier for r in usable}):
        members = [r for r in usable if r.tier == tier]
        ordered.extend(_order_tier(members, stats, rng))
    return ordered, skipped


def _order_tier(
    members: list[Route], stats: Mapping[str, UpstreamStats], rng: random.Random
) -> list[Route]:
    if len(members) < 2:
        return members
    a, b = _two_by_weight(members, rng)
    first = a if stats[a.upstream].score() <= stats[b.upstream].score() else b
    rest = sorted((r for r in members if r is not first), key=lambda r: stats[r.upstream].score())
    return [first, *rest]


def _two_by_weight(members: list[Route], rng: random.Random) -> tuple[Route, Route]:
    a = rng.choices(members, weights=[r.weight for r in members])[0]
    others = [r for r in members if r is not a]
    b = rng.choices(others, weights=[r.weight for r in others])[0]
    return a, b
