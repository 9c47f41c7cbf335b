"""Slots on upstreams for the router: take one now, overflow, or wait in the fair queue.

Every attempt holds a slot on its upstream for as long as it runs; the number of slots is the
upstream's adaptive limit. A freed slot goes straight to the next waiter that can use it, so
the queue drains at the speed the upstreams really answer, and nobody pushes an upstream past
the limit it has shown.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping

from nobusy.admission.adaptive import AIMDLimit
from nobusy.admission.queue import FairQueue, Waiter
from nobusy.errors import QueueFull, QueueTimeout

__all__ = ["Capacity", "Ticket"]

_ALPHA = 0.2  # smoothing of each upstream's answer time, for wait estimates
# While other keys are active, one key may hold at most this share of an upstream's slots:
# the rest stay free for the others, so a flooding key cannot make them wait for a slot.
_HEADROOM_SHARE = 0.75
_ACTIVE = 5.0  # seconds since a key's last request during which it counts as active
# Estimates are padded: arrivals of higher priority and other keys' turns slow a waiter down.
_MARGIN = 1.1
_RATE_WINDOW = 10.0


class Capacity:
    """Per-upstream adaptive limits and the one queue of requests waiting for any of them."""

    def __init__(self, max_concurrency: Mapping[str, int | None], initial: int = 32) -> None:
        self.limits = {
            name: AIMDLimit.for_upstream(ceiling, initial)
            for name, ceiling in max_concurrency.items()
        }
        self.queue = FairQueue()
        self.service: dict[str, float] = dict.fromkeys(max_concurrency, 1.0)
        self._held: dict[str, dict[str, int]] = {name: {} for name in max_concurrency}
        self._seen: dict[str, float] = {}
        self._grants: dict[str, deque[float]] = {name: deque() for name in max_concurrency}

    def try_take(self, upstream: str, who: str = "") -> bool:
        """Take a slot if the upstream has room and ``who`` is within its share."""
        self._note(who)
        limit = self.limits[upstream]
        if not limit.has_room() or not self._within_share(upstream, who):
            return False
        self._grant(upstream, who)
        return True

    def _note(self, who: str) -> None:
        if not who:
            return
        now = time.monotonic()
        self._seen[who] = now
        if len(self._seen) > 4096:  # forget keys idle for long; bounded memory
            self._seen = {k: t for k, t in self._seen.items() if now - t < _ACTIVE}

    def _within_share(self, upstream: str, who: str) -> bool:
        if not who:
            return True
        now = time.monotonic()
        others = any(k != who and now - t < _ACTIVE for k, t in self._seen.items())
        if not others:
            return True
        share = max(1, int(self.limits[upstream].current * _HEADROOM_SHARE))
        return self._held[upstream].get(who, 0) < share

    def _grant(self, upstream: str, who: str) -> None:
        self.limits[upstream].acquire()
        held = self._held[upstream]
        held[who] = held.get(who, 0) + 1
        self._grants[upstream].append(time.monotonic())
        self._recent_grants(upstream)

    def _recent_grants(self, upstream: str) -> int:
        # Timestamps arrive in order: dropping the old ones from the left and counting the
        # rest is O(1) amortised, where rescanning the window cost a pass per waiter per second.
        grants = self._grants[upstream]
        horizon = time.monotonic() - _RATE_WINDOW
        while grants and grants[0] < horizon:
            grants.popleft()
        return len(grants)

    def release(self, upstream: str, outcome: str, seconds: float, who: str = "") -> None:
        """Free a slot (``ok``, ``overload`` or ``ignore``) and hand it to a waiter."""
        limit = self.limits[upstream]
        limit.release(outcome)
        held = self._held[upstream]
        if held.get(who, 0) > 1:
            held[who] -= 1
        else:
            held.pop(who, None)
        if outcome == "ok":
            self.service[upstream] += _ALPHA * (seconds - self.service[upstream])
        while limit.has_room():
            waiter = self.queue.pop_for(upstream, lambda k: self._within_share(upstream, k))
            if waiter is None:
                return
            self._grant(upstream, waiter.key)
            waiter.future.set_result(upstream)

    def estimate(self, position: int, upstreams: Iterable[str]) -> float:
        """Seconds until the ``position``-th waiter is served (Little's law over the routes)."""
        names = list(upstreams)
        slots = sum(self.limits[n].current for n in names) or 1
        per_slot = sum(self.service[n] * self.limits[n].current for n in names) / slots
        little = position * per_slot / slots
        # The rate slots were actually handed out lately: under overload it is the truth.
        granted = sum(self._recent_grants(n) for n in names)
        drained = position / (granted / _RATE_WINDOW) if granted >= 5 else 0.0
        return max(little, drained) * _MARGIN

    def enqueue(
        self, upstreams: frozenset[str], key: str, priority: str, patience: float
    ) -> Ticket:
        """Join the queue, or raise QueueFull at once if the wait would exceed ``patience``."""
        self._note(key)
        waiter = Waiter(key, priority, upstreams)
        self.queue.push(waiter)
        ticket = Ticket(self, waiter, patience)
        position, eta = ticket.status()
        if eta > patience:
            self.queue.remove(waiter)
            raise QueueFull(eta, patience, position)
        return ticket

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "limit": limit.current,
                "in_flight": limit.in_flight,
                "drops": limit.drops,
                "ceiling": limit.ceiling,
            }
            for name, limit in self.limits.items()
        }


class Ticket:
    """A place in the queue: reports its position while waiting, then names the upstream."""

    def __init__(self, capacity: Capacity, waiter: Waiter, patience: float) -> None:
        self.capacity = capacity
        self.waiter = waiter
        self.patience = patience
        self.deadline = time.monotonic() + patience
        self.enqueued = time.monotonic()

    def status(self) -> tuple[int, float]:
        position = self.capacity.queue.position(self.waiter)
        return position, self.capacity.estimate(position, self.waiter.upstreams)

    async def updates(self) -> AsyncIterator[tuple[int, float]]:
        """(position, estimated seconds) now and every second until a slot is granted."""
        future = self.waiter.future
        try:
            while not future.done():
                position, eta = self.status()
                yield position, eta
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise QueueTimeout(self.patience, position)
                if eta > left:
                    # The queue moves slower than first estimated: say so now, not at the
                    # end of the patience.
                    raise QueueFull(eta, left, position)
                await asyncio.wait({future}, timeout=min(1.0, left))
        except BaseException:
            self.abandon()
            raise

    async def wait(self) -> str:
        async for _ in self.updates():
            pass
        return self.upstream

    @property
    def upstream(self) -> str:
        return self.waiter.future.result()

    @property
    def waited(self) -> float:
        return time.monotonic() - self.enqueued

    def abandon(self) -> None:
        """Leave the queue; a slot handed over in the meantime is given back."""
        future = self.waiter.future
        self.capacity.queue.remove(self.waiter)
        if future.done() and not future.cancelled():
            self.capacity.release(future.result(), "ignore", 0.0, self.waiter.key)
        else:
            future.cancel()
