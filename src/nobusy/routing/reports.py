"""What this replica tells the others about its keys and retry budgets, and what it learns
from theirs: the numbers fairness and the budgets decide on when ``state`` is set.

Every ``store.redis_leases.SYNC`` seconds each replica sends a report (``report``) and reads
the other live replicas' (``learn``): per active key, its class, its request rate, its answer
time and its requests waiting; per upstream, the slots each key holds; per upstream, the
retry budget's events and spending within its window. The figures lag by one sync (0.2 s);
exact counts are where they must be, in the lease script.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from nobusy.admission.queue import PRIORITIES
from nobusy.routing.router import Router

__all__ = ["learn", "report"]


def report(router: Router) -> dict[str, Any]:
    """This replica's keys, the slots they hold, and its budgets, as JSON-ready data."""
    capacity = router.capacity
    keys: dict[str, list[Any]] = {}
    for key, priority in capacity.active():
        waiting = capacity.queue.waiting(key, priority)
        fair = capacity.fair
        keys[key] = [priority, round(fair.rate(key), 4), fair.seconds(key) or 0.0, waiting]
    held = {u: {k: n for k, n in h.items() if k} for u, h in capacity.holding().items()}
    budgets = {u: list(b.counts()) for u, b in router.retry_budgets.items()}
    return {"keys": keys, "held": {u: h for u, h in held.items() if h}, "budgets": budgets}


def learn(router: Router, reports: list[Any]) -> None:
    """Sum the other replicas' reports into this replica's view of them."""
    capacity = router.capacity
    keys: dict[str, tuple[str, int]] = {}
    rates: dict[str, tuple[float, float]] = {}
    held: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    budgets: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for one in reports:
        if not isinstance(one, dict):
            continue
        for key, (priority, rate, seconds, waiting) in one.get("keys", {}).items():
            if priority not in PRIORITIES:
                continue
            _, before = keys.get(key, (priority, 0))
            keys[key] = (priority, before + int(waiting))
            r, s = rates.get(key, (0.0, 0.0))
            rates[key] = (r + float(rate), max(s, float(seconds)))
        for upstream, counts in one.get("held", {}).items():
            for key, n in counts.items():
                held[upstream][key] += int(n)
        for upstream, (events, spent) in one.get("budgets", {}).items():
            budgets[upstream][0] += int(events)
            budgets[upstream][1] += int(spent)
    capacity.others = keys
    capacity.others_held = {u: dict(h) for u, h in held.items()}
    capacity.fair.others = rates
    for upstream, budget in router.retry_budgets.items():
        events, spent = budgets.get(upstream, (0, 0))
        budget.others = (events, spent)
