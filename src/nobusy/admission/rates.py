"""An upstream's own ceilings on requests and tokens per minute (``rpm``, ``tpm``).

Providers cap an account's requests and tokens per minute and answer 429 past the cap; an
upstream's ``rpm`` and ``tpm`` say what nobusy may send it. The window is the one a key's
limits slide (``admission.limits.Window``): an attempt counts for sixty seconds from when it
is taken, its estimated tokens with it (``estimate_tokens``), and the correction by the tokens
the upstream reported from when the attempt ends. An upstream whose window has no room is
passed over like one at its concurrency limit: the walker tries the next route, and a request
no route takes waits in the queue. ``UpstreamRates`` is this process's window; with ``state``
the window is decided in Redis with the lease (``store.redis_leases``), for the whole fleet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from nobusy.admission.limits import WINDOW, Window

__all__ = ["Rates", "UpstreamRates", "full"]

Rates = tuple[int | None, int | None]  # an upstream's (rpm, tpm); None: no ceiling


def full(rates: Rates, requests: int, tokens: int, estimate: int) -> bool:
    """Whether a window holding ``requests`` and ``tokens`` has no room for one more request
    of ``estimate`` tokens. As for a key's ``tpm``, a first request always fits."""
    rpm, tpm = rates
    if rpm is not None and requests >= rpm:
        return True
    return tpm is not None and requests > 0 and tokens + estimate > tpm


class UpstreamRates:
    """The windows of the upstreams with ``rpm`` or ``tpm``, counted in this process."""

    def __init__(
        self, ceilings: Mapping[str, Rates], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.ceilings = {n: r for n, r in ceilings.items() if r != (None, None)}
        self._windows = {name: Window() for name in self.ceilings}

    def adopt(self, upstream: str, rates: Rates) -> None:
        """Set (or, with ``(None, None)``, drop) an upstream's ceilings; its window stays."""
        if rates == (None, None):
            self.ceilings.pop(upstream, None)
            self._windows.pop(upstream, None)
            return
        self.ceilings[upstream] = rates
        self._windows.setdefault(upstream, Window())

    def room(self, upstream: str, estimate: int = 0, share: int = 1) -> bool:
        """Whether one more request of ``estimate`` tokens fits in ``upstream``'s window, each
        ceiling divided by ``share`` (the replicas, while Redis does not answer)."""
        rates = self.ceilings.get(upstream)
        if rates is None:
            return True
        window = self._window(upstream)
        if share > 1:
            rates = (_part(rates[0], share), _part(rates[1], share))
        return not full(rates, len(window.requests), window.token_sum, estimate)

    def count(self, upstream: str, estimate: int = 0) -> None:
        """Count one request of ``estimate`` tokens in (the caller checked ``room``)."""
        window = self._windows.get(upstream)
        if window is None:
            return
        now = self.clock()
        window.requests.append(now)
        window.tokens.append((now, estimate))
        window.token_sum += estimate

    def admit(self, upstream: str, estimate: int = 0, share: int = 1) -> bool:
        """``room``, then ``count`` when there is."""
        if not self.room(upstream, estimate, share):
            return False
        self.count(upstream, estimate)
        return True

    def done(self, upstream: str, estimate: int, actual: int) -> None:
        """An attempt ended having used ``actual`` tokens: the estimate is corrected by the
        difference, from now (as a key's window is)."""
        window = self._windows.get(upstream)
        if window is None or actual == estimate:
            return
        window.tokens.append((self.clock(), actual - estimate))
        window.token_sum += actual - estimate

    def wait(self, upstream: str, share: int = 1) -> float:
        """Seconds until the oldest request leaves a full window (0: it has room)."""
        if self.room(upstream, 0, share):
            return 0.0
        window = self._windows[upstream]
        return max(0.0, window.requests[0] + WINDOW - self.clock())

    def used(self, upstream: str) -> tuple[int, int]:
        """The requests and tokens in ``upstream``'s window now."""
        window = self._window(upstream)
        return len(window.requests), window.token_sum

    def _window(self, upstream: str) -> Window:
        window = self._windows[upstream]
        window.prune(self.clock())
        return window


def _part(value: int | None, share: int) -> int | None:
    return None if value is None else max(1, value // share)
