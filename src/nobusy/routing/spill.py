"""Tiers and spill: fill an alias's cheapest tier, and spill to the next only when waiting would
take too long there.

An alias's routes rank in tiers: their place in the alias's list, or their upstream's ``tier``
(local servers 0, a cloud account 1). With ``spill_after`` set on the alias, a request goes to
a dearer tier only when the expected wait in every cheaper one exceeds it, not at the first
sign of load: a cheaper tier with no free slot keeps its requests (queued in nobusy or in the
servers' own queues) while they would wait less than ``spill_after`` there. The expected wait
is the requests waiting for the tier, plus this one, over the rate the tier finishes requests
(``TierLoad``): the rate observed since the tier became full (while full, answers end exactly
as fast as the tier serves), or, for the first second of it, Little's law over its slots and
answer times.

``TierBook`` counts, per tier, the answers given there, those spilled there from a cheaper
tier, and what the spilled ones cost (usage × price: ``money.spend``), for ``/metrics``,
``nobusy pool`` and the status board. Pure bookkeeping with an injected clock: the router
feeds it (``Router.tier_load``, ``Router.served``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["TierBook", "TierLoad", "TierTally", "choose_tier", "expected_wait"]

_WINDOW = 10.0  # seconds of answers that measure a tier's service rate
_MIN_SPAN = 1.0  # full for less than this: Little's law is the better guess
_MIN_ANSWERS = 3


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
    """Answer times per upstream (for service rates) and each tier's tallies."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._ended: dict[str, deque[float]] = {}
        self._full_since: dict[frozenset[str], float] = {}
        self.tallies: dict[int, TierTally] = {}

    def finished(self, upstream: str) -> None:
        """An answer from ``upstream`` ended well: the slot it held is free again."""
        now = self.clock()
        ended = self._ended.setdefault(upstream, deque())
        ended.append(now)
        while ended and ended[0] < now - _WINDOW:
            ended.popleft()

    def rate(self, upstreams: Iterable[str], room: bool, little: float) -> float:
        """Requests per second the tier of ``upstreams`` finishes: observed since it became
        full (``room`` false), else ``little`` (its slots over their answer times)."""
        key = frozenset(upstreams)
        now = self.clock()
        if room:
            self._full_since.pop(key, None)
            return little
        since = self._full_since.setdefault(key, now)
        span = min(now - since, _WINDOW)
        if span < _MIN_SPAN:
            return little
        done = 0
        for name in key:
            for t in reversed(self._ended.get(name, ())):
                if t < now - span:
                    break
                done += 1
        return done / span if done >= _MIN_ANSWERS else little

    def served(self, tier: int, preferred: int, cost_micros: int, upstream: str) -> None:
        """An answer from ``upstream`` in ``tier``, for an alias whose cheapest tier is
        ``preferred``; ``cost_micros``: what it cost, in the reporting currency."""
        tally = self.tallies.setdefault(tier, TierTally())
        tally.answered += 1
        tally.upstreams.add(upstream)
        if tier > preferred:
            tally.spilled += 1
            tally.spill_cost_micros += cost_micros
