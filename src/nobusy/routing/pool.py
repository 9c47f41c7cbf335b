"""The pool of local inference servers as an operator sees it: one row per server-aware upstream.

Read by the admin API (``/v1/nobusy/pool``, ``nobusy pool``), the status board and by
``/metrics`` (``nobusy_pool_*``, ``nobusy_tier_*``); draining a server (``Router.drained``) is
set here too. ``tier_rows`` adds one row per tier of the aliases' routes: utilisation now, the
answers given there, the share spilled there from a cheaper tier, and what the spill cost.
"""

from __future__ import annotations

import time
from typing import Any

from nobusy.errors import InvalidRequest, NotFound
from nobusy.routing.router import Router

__all__ = ["drain", "pool_rows", "tier_rows"]


def pool_rows(router: Router) -> list[dict[str, Any]]:
    """Each server-aware upstream: model, running/waiting, KV use, cache hits, utilisation."""
    placement = router.placement
    if placement is None:
        return []
    now = time.monotonic()
    rows: list[dict[str, Any]] = []
    for name, view in placement.servers.items():
        signals = view.signals
        reading = signals.reading if signals.fresh(now) else None
        upstream = router.upstreams[name]
        slots = signals.slots or view.limit()
        running = reading.running if reading is not None else None
        busy = running if running is not None else float(view.in_flight())
        rows.append(
            {
                "name": name,
                "kind": upstream.kind,
                "model": upstream.default_model or ", ".join(signals.models[:3]),
                "running": running,
                "waiting": reading.waiting if reading is not None else None,
                "kv_usage": reading.kv_usage if reading is not None else None,
                "preemptions": reading.preemptions if reading is not None else None,
                "server_hit_rate": signals.hit_rate() if reading is not None else None,
                "cache_hit_estimate": placement.cache_hit_estimate(name),
                "in_flight": view.in_flight(),
                "limit": view.limit(),
                "slots": slots,
                "utilisation": round(min(busy / max(slots, 1), 1.0), 4),
                "placed": placement.placed[name],
                "signals": "metrics" if reading is not None else "learned limit",
                "problem": signals.problem,
                "drained": name in router.drained,
            }
        )
    return rows


def tier_rows(router: Router) -> list[dict[str, Any]]:
    """Each tier (lower: cheaper): its upstreams, utilisation, answers, spilled share and cost."""
    members: dict[str, int] = {}  # upstream -> its cheapest tier in any alias
    for spec in router.models.values():
        for route in spec.routes:
            members[route.upstream] = min(route.tier, members.get(route.upstream, route.tier))
    tallies = router.tiers.tallies
    for number, counted in tallies.items():
        for name in counted.upstreams:
            members.setdefault(name, number)
    now = time.monotonic()
    servers = router.placement.servers if router.placement is not None else {}
    busy: dict[int, float] = {}
    slots: dict[int, float] = {}
    for name, number in members.items():
        limit = router.capacity.limits[name]
        view = servers.get(name)
        reading = view.signals.reading if view is not None and view.signals.fresh(now) else None
        if view is not None and reading is not None and reading.running is not None:
            used, room = reading.running, view.signals.slots or limit.current
        else:
            used, room = float(router.stats[name].in_flight), limit.current
        busy[number] = busy.get(number, 0.0) + used
        slots[number] = slots.get(number, 0.0) + room
    answered = sum(t.answered for t in tallies.values())
    currency = router.settings.pricing.currency
    rows = []
    for number in sorted(set(members.values()) | set(tallies)):
        tally = tallies.get(number)
        rows.append(
            {
                "tier": number,
                "upstreams": sorted(n for n, t in members.items() if t == number),
                "utilisation": round(
                    min(busy.get(number, 0.0) / max(slots.get(number, 1), 1), 1), 4
                ),
                "answered": tally.answered if tally else 0,
                "share": round(tally.answered / answered, 4) if tally and answered else 0.0,
                "spilled": tally.spilled if tally else 0,
                "spilled_share": round(tally.spilled / answered, 4) if tally and answered else 0.0,
                "spill_cost": (tally.spill_cost_micros if tally else 0) / 1_000_000,
                "currency": currency,
            }
        )
    return rows


def drain(router: Router, name: str, on: bool) -> None:
    """Stop (``on``) or resume new traffic to upstream ``name``; streams running go on."""
    if name not in router.upstreams:
        raise NotFound(f"No upstream named '{name}'.", param="name")
    if on:
        aliases = [
            alias
            for alias, spec in router.models.items()
            if any(r.upstream == name for r in (*spec.routes, *spec.overflow))
            and all(r.upstream in (router.drained | {name}) for r in (*spec.routes, *spec.overflow))
        ]
        if aliases:
            raise InvalidRequest(
                f"Draining '{name}' would leave no upstream for {', '.join(aliases)}.",
                param="name",
            )
        router.drained.add(name)
    else:
        router.drained.discard(name)
