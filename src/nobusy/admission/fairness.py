"""Who floods: fair shares of an upstream's slots by what each key asks for, and how many slots
the keys within their share needed lately.

A key's demand is the concurrency it offers: the rate of its requests (smoothed over
``_WINDOW`` seconds, refused ones included) times its answer time. Shares are max-min fair
(water-filling) over the demands of the keys of one priority class: a key asking for less than
an equal split is *light* and is entitled to all it asks; the *heavy* ones split the rest.

A running request is never pre-empted, and light keys are light on average, not at every
instant: requests arrive in bursts, and a key sending 0.8 slots' worth sometimes needs two at
once. Were each light key held to an equal split of the slots while a heavy key filled the
rest, every light key would become a one-slot queue of its own, and wait where it did not
wait alone (issue 11: p99 2.5-2.9× with random arrivals). So a heavy key takes a slot only
while the slots left free still cover what the light keys held at their busiest lately
(``_PEAK_WINDOW``): the flood gets what the others did not need, not a share of what they
will.

With ``state`` set, a key's demand is the fleet's: ``others`` holds the request rate and answer
time the other replicas report for it (``routing.reports``), so a key flooding one replica is
heavy on all of them, and a quiet key on another replica counts among the light ones.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable

__all__ = ["Fairness"]

_WINDOW = 10.0  # seconds over which a key's request rate is smoothed
# A key is heavy only past twice the level: a rate counted over seconds is noisy (a key
# sending at random 0.8 slots' worth reads as 0.4 to 1.5), and a light key taken for heavy
# would be held back behind the others' reserve.
_TOLERANCE = 2.0
_ALPHA = 0.2  # smoothing of a key's own answer time
# How long the light keys' busiest moment is remembered: several answers long, since a slot
# given to a heavy key now stays taken for about one answer.
_PEAK_WINDOW = 10.0
_PEAK_ANSWERS = 4.0
_CACHE = 0.1  # seconds a classification is reused: demands change over seconds, not faster


class Fairness:
    """Per-key demand, the light/heavy split of a class, and the light keys' recent peak."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        # key -> (requests, decayed by _WINDOW; when last counted; when first seen)
        self._arrivals: dict[str, tuple[float, float, float]] = {}
        self._seconds: dict[str, float] = {}  # key -> its smoothed answer time
        # upstream -> (time, light keys' slots held and wanted), a sliding-window maximum
        self._peaks: dict[str, deque[tuple[float, int]]] = {}
        # (upstream, class) -> (when, the keys classified, the light ones among them)
        self._light: dict[tuple[str, str], tuple[float, frozenset[str], frozenset[str]]] = {}
        # key -> (requests per second, answer time or 0) at the other replicas, as reported
        self.others: dict[str, tuple[float, float]] = {}

    def arrived(self, key: str) -> None:
        now = self.clock()
        count, last, first = self._arrivals.get(key, (0.0, now, now))
        self._arrivals[key] = (count * math.exp(-(now - last) / _WINDOW) + 1.0, now, first)

    def answered(self, key: str, seconds: float) -> None:
        before = self._seconds.get(key)
        self._seconds[key] = seconds if before is None else before + _ALPHA * (seconds - before)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop every key not in ``keep`` (bounded memory, with the caller's own pruning)."""
        kept = set(keep)
        self._arrivals = {k: v for k, v in self._arrivals.items() if k in kept}
        self._seconds = {k: v for k, v in self._seconds.items() if k in kept}

    def rate(self, key: str) -> float:
        """Requests per second ``key`` sent to this process lately."""
        seen = self._arrivals.get(key)
        if seen is None:
            return 0.0
        count, last, first = seen
        now = self.clock()
        # A key seen for less than the window has had less time to send: divide by the time
        # the decayed count covers (as Adam's bias correction), at least a second.
        span = _WINDOW * (1.0 - math.exp(-max(now - first, 1.0) / _WINDOW))
        return count * math.exp(-(now - last) / _WINDOW) / span

    def seconds(self, key: str) -> float | None:
        """``key``'s smoothed answer time here, if it was answered lately."""
        return self._seconds.get(key)

    def demand(self, key: str, service: float) -> float:
        """Slots ``key`` offers to keep busy: its request rate times its answer time (the
        fleet's, with ``others``)."""
        rate, seconds = self.others.get(key, (0.0, 0.0))
        return (self.rate(key) + rate) * self._seconds.get(key, seconds or service)

    def light(
        self, upstream: str, cls: str, keys: Iterable[str], slots: int, service: float
    ) -> frozenset[str]:
        """The keys of ``keys`` (one class, active lately) that ask for less than their max-min
        fair share of ``slots`` on ``upstream``."""
        now, everyone = self.clock(), frozenset(keys)
        cached = self._light.get((upstream, cls))
        if cached is not None and now - cached[0] < _CACHE and cached[1] == everyone:
            return cached[2]
        demands = sorted((self.demand(k, service), k) for k in everyone)
        left, light = float(slots), set()
        for i, (demand, key) in enumerate(demands):
            if demand > _TOLERANCE * left / (len(demands) - i):
                break  # this key and every larger one are well past the level: heavy
            light.add(key)
            left -= demand
        found = frozenset(light)
        self._light[(upstream, cls)] = (now, everyone, found)
        return found

    def peak(self, upstream: str, in_use: int, service: float) -> int:
        """The most slots the light keys held and wanted at once lately, ``in_use`` now."""
        now = self.clock()
        window = max(_PEAK_WINDOW, _PEAK_ANSWERS * service)
        peaks = self._peaks.setdefault(upstream, deque())
        # A sliding-window maximum: values are kept decreasing, so the first is the largest.
        while peaks and peaks[-1][1] <= in_use:
            peaks.pop()
        peaks.append((now, in_use))
        while peaks[0][0] < now - window:
            peaks.popleft()
        return peaks[0][1]
