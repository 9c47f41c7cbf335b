"""Slots on upstreams for the router: take one now, overflow, or wait in the fair queue.

Every attempt holds a slot on its upstream for as long as it runs; the number of slots is the
upstream's adaptive limit. A freed slot goes straight to the next waiter that can use it, so
the queue drains at the speed the upstreams really answer, and nobody pushes an upstream past
the limit it has shown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping

from nobusy.admission.adaptive import AIMDLimit
from nobusy.admission.queue import FairQueue, Waiter
from nobusy.errors import QueueFull, QueueTimeout

__all__ = ["Capacity", "Ticket"]

_ALPHA = 0.2  # smoothing of each upstream's answer time, for wait estimates


class Capacity:
    """Per-upstream adaptive limits and the one queue of requests waiting for any of them."""

    def __init__(self, max_concurrency: Mapping[str, int | None], initial: int = 32) -> None:
        self.limits = {
            name: AIMDLimit.for_upstream(ceiling, initial)
            for name, ceiling in max_concurrency.items()
        }
        self.queue = FairQueue()
        self.service: dict[str, float] = dict.fromkeys(max_concurrency, 1.0)

    def try_take(self, upstream: str) -> bool:
        limit = self.limits[upstream]
        if not limit.has_room():
            return False
        limit.acquire()
        return True

    def release(self, upstream: str, outcome: str, seconds: float) -> None:
        """Free a slot (``ok``, ``overload`` or ``ignore``) and hand it to a waiter."""
        limit = self.limits[upstream]
        limit.release(outcome)
        if outcome == "ok":
            self.service[upstream] += _ALPHA * (seconds - self.service[upstream])
        while limit.has_room():
            waiter = self.queue.pop_for(upstream)
            if waiter is None:
                return
            limit.acquire()
            waiter.future.set_result(upstream)

    def estimate(self, position: int, upstreams: Iterable[str]) -> float:
        """Seconds until the ``position``-th waiter is served (Little's law over the routes)."""
        names = list(upstreams)
        slots = sum(self.limits[n].current for n in names) or 1
        per_slot = sum(self.service[n] * self.limits[n].current for n in names) / slots
        return position * per_slot / slots

    def enqueue(
        self, upstreams: frozenset[str], key: str, priority: str, patience: float
    ) -> Ticket:
        """Join the queue, or raise QueueFull at once if the wait would exceed ``patience``."""
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
                yield self.status()
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise QueueTimeout(self.patience, self.status()[0])
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
            self.capacity.release(future.result(), "ignore", 0.0)
        else:
            future.cancel()
