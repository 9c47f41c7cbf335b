"""Tiers and spill: fill an alias's cheapest tier, and spill to the next only when waiting would
take too long there.

An alias's routes rank in tiers: their place in the alias's list, or their upstream's ``tier``
(local servers 0, a cloud account 1). With ``spill_after`` set on the alias, a request goes to
a dearer tier only when the expected wait in every cheaper one exceeds it, not at the first
sign of load: a cheaper tier with no free slot keeps its requests (queued in nobusy or in the
servers' own queues) while they would wait less than ``spill_after`` there. The expected wait
is the requests waiting for the tier, plus this one, over the rate the tier finishes requests
(``TierLoad``): each upstream's slots over the time an answer holds one, learned from the
answers (from its first token to its end: the time before the first token is mostly waiting
in the server's queue, which is what is being estimated, so it is left out).

``TierBook`` counts, per tier, the answers given there, those spilled there from a cheaper
tier, and what the spilled ones cost (usage × price: ``money.spend``), for ``/metrics``,
``nobusy pool`` and the status board. Pure bookkeeping: the router and its attempts feed it
(``Router.tier_load``, ``Router.served``, ``Attempt``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["TierBook", "TierLoad", "TierTally", "choose_tier", "expected_wait"]

_ALPHA = 0.1  # smoothing of the time an answer holds a slot
_MIN_HOLD = 1e-3


@dataclass(frozen=True, slots=True)
class TierLoad:
    """What the spill decision reads of one tier now."""

    room: bool  # some upstream of the tier would start a request at once
    ahead: float  # requests waiting for the tier: nobusy's queue and the servers' queues
    rate: float  # requests the tier finishes per second


def expected_wait(load: TierLoad) -> float:
    """Seconds a request sent to this tier now would wait before it starts."""
    if load.room:
        return 0.0
    return (load.ahead + 1) / load.rate if load.rate > 0 else math.inf


def choose_tier(loads: Sequence[TierLoad], spill_after: float) -> int:
    """The index of the tier to send a request to: the cheapest whose expected wait is within
    ``spill_after``; when none is, the one with the shortest wait (the cheaper on a tie)."""
    waits = [expected_wait(load) for load in loads]
    for i, wait in enumerate(waits):
        if wait <= spill_after:
            return i
    return min(range(len(waits)), key=lambda i: (waits[i], i))


@dataclass(slots=True)
class TierTally:
    """One tier's answers since start."""

    answered: int = 0
    spilled: int = 0  # ... of which a cheaper tier of the alias would have been preferred
    spill_cost_micros: int = 0  # what the spilled ones cost, in the reporting currency
    upstreams: set[str] = field(default_factory=set)


class TierBook:
    """How long an answer holds a slot, per upstream (for service rates); each tier's tallies."""

    def __init__(self) -> None:
        self.holds: dict[str, float] = {}  # upstream -> EWMA of seconds an answer holds a slot
        self.tallies: dict[int, TierTally] = {}

    def finished(self, upstream: str, seconds: float) -> None:
        """An answer from ``upstream`` ended well after holding its slot ``seconds``."""
        before = self.holds.get(upstream)
        self.holds[upstream] = seconds if before is None else before + _ALPHA * (seconds - before)

    def rate(self, slots: Mapping[str, float], fallback: Mapping[str, float]) -> float:
        """Requests per second a tier finishes: each upstream's ``slots`` over the time an
        answer holds one (learned; ``fallback``: its whole answer time, until one ended)."""
        total = 0.0
        for name, count in slots.items():
            hold = self.holds.get(name, fallback.get(name, 1.0))
            total += count / max(hold, _MIN_HOLD)
        return total

    def served(self, tier: int, preferred: int, cost_micros: int, upstream: str) -> None:
        """An answer from ``upstream`` in ``tier``, for an alias whose cheapest tier is
        ``preferred``; ``cost_micros``: what it cost, in the reporting currency."""
        tally = self.tallies.setdefault(tier, TierTally())
        tally.answered += 1
        tally.upstreams.add(upstream)
        if tier > preferred:
            tally.spilled += 1
            tally.spill_cost_micros += cost_micros
