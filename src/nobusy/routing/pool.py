"""The pool of local inference servers as an operator sees it: one row per server-aware upstream.

Read by the admin API (``/v1/nobusy/pool``, ``nobusy pool``) and by ``/metrics``
(``nobusy_pool_*``); draining a server (``Router.drained``) is set here too.
"""

from __future__ import annotations

import time
from typing import Any

from nobusy.errors import InvalidRequest, NotFound
from nobusy.routing.router import Router

__all__ = ["drain", "pool_rows"]


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
