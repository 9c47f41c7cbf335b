"""Sliding-window budgets: at most ``ratio`` extra actions per base event, plus a minimum.

Used for retries (Google SRE: keep retries under ~10% of requests, so an outage grows load
~1.1x instead of ~3x) and for hedged requests (a few percent of requests at most).

With ``state`` set, the other replicas' events and spending within their windows (``others``,
reported every ``store.redis_leases.SYNC`` seconds) count too, so the budget bounds the
fleet's failovers, not each replica's.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Budget"]


@dataclass
class Budget:
    """``try_spend`` succeeds while spent < minimum + ratio × events within ``window`` seconds."""

    ratio: float
    minimum: int
    window: float
    clock: Callable[[], float] = time.monotonic
    _events: deque[float] = field(default_factory=deque)
    _spent: deque[float] = field(default_factory=deque)
    others: tuple[int, int] = (0, 0)  # the other replicas' (events, spent) in their windows

    def note(self) -> None:
        """Count one base event (a request, or a first attempt)."""
        now = self.clock()
        events = self._events
        events.append(now)
        # Pruned here too, not only when spending: with no failures nothing is ever spent,
        # and the window would otherwise grow by one entry per request forever.
        horizon = now - self.window
        while events[0] < horizon:
            events.popleft()

    def try_spend(self) -> bool:
        """Take one unit of budget if there is one left."""
        now = self.clock()
        horizon = now - self.window
        for queue in (self._events, self._spent):
            while queue and queue[0] < horizon:
                queue.popleft()
        events, spent = self.others
        if len(self._spent) + spent < self.minimum + self.ratio * (len(self._events) + events):
            self._spent.append(now)
            return True
        return False

    def counts(self) -> tuple[int, int]:
        """(events, spent) within the window now: what this replica reports to the others."""
        horizon = self.clock() - self.window
        for queue in (self._events, self._spent):
            while queue and queue[0] < horizon:
                queue.popleft()
        return len(self._events), len(self._spent)
