"""An upstream's concurrency limit, found by AIMD as in Netflix's concurrency-limits.

The limit grows by about one for every ``limit`` successful answers while the upstream is
actually used (at least half full), and shrinks ×0.9 when it answers 429/503/529 or times out
before its first token. ``max_concurrency`` from the config is the ceiling; without one nobusy
starts at ``initial`` and climbs. For LLMs, whole-request latency depends on answer length, so
only overload answers and first-token timeouts count as drops (RESILIENCE.md).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AIMDLimit"]


@dataclass
class AIMDLimit:
    """Additive increase, multiplicative decrease; ``limit`` is a float, used as its floor."""

    ceiling: float
    limit: float
    floor: float = 1.0
    backoff: float = 0.9
    in_flight: int = 0
    drops: int = 0
    last_drop: float = float("inf")  # the limit at which the upstream last said "busy"

    @classmethod
    def for_upstream(cls, max_concurrency: int | None, initial: int = 32) -> AIMDLimit:
        ceiling = float(max_concurrency) if max_concurrency is not None else 4096.0
        return cls(ceiling=ceiling, limit=min(ceiling, float(initial)))

    @property
    def current(self) -> int:
        return max(int(self.floor), int(self.limit))

    def has_room(self) -> bool:
        return self.in_flight < self.current

    def acquire(self) -> None:
        self.in_flight += 1

    def release(self, outcome: str) -> None:
        """``ok``, ``overload`` (429/503/529, first-token timeout) or ``ignore``."""
        self.in_flight -= 1
        if outcome == "overload":
            self.drops += 1
            self.last_drop = self.limit
            self.limit = max(self.floor, self.limit * self.backoff)
        elif outcome == "ok" and self.in_flight + 1 >= self.current / 2:
            # Near the limit that failed last time, probe five times more slowly: each step
            # past the real capacity costs a request a "busy" answer.
            step = 1.0 if self.limit + 1 < self.last_drop else 0.2
            self.limit = min(self.ceiling, self.limit + step / self.limit)
