"""Requests waiting for capacity: by priority class first, then fair across keys.

Within a class, keys take turns (deficit round robin with a quantum of one request), so a key
that floods the queue waits behind its own requests while every other key's next request is
served in turn. Each waiter knows its position and an estimate of its wait, so a client can be
told (and rejected at once when the estimate already exceeds its patience).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FairQueue", "PRIORITIES", "Waiter", "place"]

PRIORITIES = ("high", "normal", "low")


@dataclass(eq=False)
class Waiter:
    """One request waiting; resolved with the upstream name whose slot it was given."""

    key: str
    priority: str
    upstreams: frozenset[str]
    future: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    tokens: int = 0  # the request's estimated tokens, for its upstream's tpm window
    since: float = field(default_factory=time.time)  # wall clock: comparable across replicas

    @property
    def place(self) -> float:
        """Where it stands in the fleet's order: class first, then time of arrival."""
        return place(self.priority, self.since)


def place(priority: str, since: float) -> float:
    """A request's place in the fleet's order (lower: sooner): its class, then its arrival on
    the wall clock (replicas on several hosts compare their clocks: NTP keeps them within
    milliseconds, what a place is worth)."""
    return PRIORITIES.index(priority) * 1e10 + since


class FairQueue:
    """Priority classes, each a round robin of per-key FIFO queues."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._classes: dict[str, OrderedDict[str, deque[Waiter]]] = {
            p: OrderedDict() for p in PRIORITIES
        }
        self.size = 0
        # When the queue last became non-empty: grants since then show how fast it drains.
        self.since = clock()

    def push(self, waiter: Waiter, front: bool = False) -> None:
        """Join at the back; ``front`` puts a waiter that already had its turn (and lost it
        to an upstream that was busy after all) first in its class."""
        keys = self._classes[waiter.priority]
        mine = keys.setdefault(waiter.key, deque())
        if front:
            mine.appendleft(waiter)
            keys.move_to_end(waiter.key, last=False)
        else:
            mine.append(waiter)
        if not self.size:
            self.since = self.clock()
        self.size += 1

    def remove(self, waiter: Waiter) -> None:
        keys = self._classes[waiter.priority]
        queue = keys.get(waiter.key)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self.size -= 1
            if not queue:
                del keys[waiter.key]

    def pop_for(self, upstream: str, allowed: Callable[[str], bool] | None = None) -> Waiter | None:
        """The next waiter that can use a slot on ``upstream`` (and whose key is ``allowed``),
        in priority and fair order."""
        for priority in PRIORITIES:
            keys = self._classes[priority]
            for key in list(keys):
                if allowed is not None and not allowed(key):
                    continue
                queue = keys[key]
                for waiter in queue:
                    if upstream in waiter.upstreams and not waiter.future.done():
                        queue.remove(waiter)
                        self.size -= 1
                        # The key goes to the back of its class: the next turn is someone else's.
                        if queue:
                            keys.move_to_end(key)
                        else:
                            del keys[key]
                        return waiter
        return None

    def first(self, key: str) -> float | None:
        """The earliest place among ``key``'s waiters (each class's line of a key waits in
        order), or None."""
        lines = [keys[key] for keys in self._classes.values() if keys.get(key)]
        return min((line[0].place for line in lines), default=None)

    def waiting(self, key: str, priority: str) -> int:
        """How many requests of ``key`` wait in class ``priority``."""
        return len(self._classes[priority].get(key, ()))

    def rank(self, waiter: Waiter) -> int:
        """How many of its own key's requests are ahead of ``waiter`` (0 = its key's next)."""
        mine = self._classes[waiter.priority].get(waiter.key)
        return mine.index(waiter) if mine and waiter in mine else 0

    def position(self, waiter: Waiter) -> int:
        """How many waiters would be served first, counting round robin turns (1 = next)."""
        ahead = 0
        for priority in PRIORITIES:
            keys = self._classes[priority]
            if priority != waiter.priority:
                if PRIORITIES.index(priority) < PRIORITIES.index(waiter.priority):
                    ahead += sum(len(q) for q in keys.values())
                continue
            mine = keys.get(waiter.key)
            rank = mine.index(waiter) if mine and waiter in mine else 0
            # Every other key in the class gets one turn per round before each of mine.
            ahead += sum(min(len(q), rank + 1) for k, q in keys.items() if k != waiter.key)
            ahead += rank
            break
        return ahead + 1

    def waiting_for(self, upstreams: frozenset[str]) -> int:
        """How many waiters can only be served by ``upstreams`` (a tier's queue)."""
        return sum(
            w.upstreams <= upstreams
            for keys in self._classes.values()
            for line in keys.values()
            for w in line
        )

    def depth(self) -> dict[str, int]:
        return {p: sum(len(q) for q in self._classes[p].values()) for p in PRIORITIES}
