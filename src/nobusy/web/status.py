"""``GET /v1/nobusy/status``: running totals for the console's status board, for the admin key
(checked by the admin mount's guard, ``nobusy.api.admin``).

Totals only, never rates: the page polls and differences two answers over their ``time``, so
the server keeps no history and two open boards cannot disturb each other. Counters are this
process's (with ``--workers N``, of the worker that answered); usage per key comes from the
shared database, so it covers every worker. ``replicas`` lists every replica sharing the
state as its heartbeat last showed it (this one alone without ``state``), ``backends`` the
health of the shared backends (URLs redacted).
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.cache.memory import ResponseCache
from nobusy.responses import JSONResponse
from nobusy.state import app_state
from nobusy.store.backends import usage_by_key

__all__ = ["USAGE_WINDOW", "counter_totals", "routes", "status"]

# How far back the board's "usage per key" looks.
USAGE_WINDOW = timedelta(hours=1)


def _cache(cache: ResponseCache | None) -> dict[str, int] | None:
    """This process's response-cache totals (None: no alias enables the cache)."""
    if cache is None:
        return None
    return {"hits": cache.hits, "misses": cache.misses, "stale": cache.stale,
            "kept": cache.kept, "entries": len(cache), "bytes": cache.bytes}  # fmt: skip


async def status(request: Request) -> Response:
    """Requests, tokens, errors and in-flight totals now, the queue, and usage per key."""
    state = app_state(request)
    registry = state.metrics.registry
    requests = counter_totals(registry, "nobusy_requests", "outcome")
    tokens = counter_totals(registry, "nobusy_tokens", "type")
    errors = counter_totals(registry, "nobusy_errors", "code")
    in_flight = counter_totals(registry, "nobusy_in_flight_requests", "alias", suffix="")
    since = datetime.now(UTC) - USAGE_WINDOW
    keys = await run_in_threadpool(usage_by_key, state.settings, since)
    now = time.time()
    return JSONResponse(
        {
            "object": "nobusy.status",
            "time": now,
            "started": state.metrics.started,
            "requests": {"total": sum(requests.values()), "by_outcome": requests},
            "tokens": {"total": sum(tokens.values()), "by_type": tokens},
            "errors": {"total": sum(errors.values()), "by_code": errors},
            "in_flight": sum(in_flight.values()),
            "queue": state.router.capacity.queue.depth(),
            "draining": state.drain.draining,
            "keys": {"window": int(USAGE_WINDOW.total_seconds()), "data": keys},
            "replica": state.fleet.replica if state.fleet is not None else None,
            "replicas": [r.json(now) for r in state.fleet.replicas()] if state.fleet else [],
            "backends": [backend.health().json() for backend in state.backends],
            "cache": _cache(state.cache),
        }
    )


def counter_totals(
    registry: CollectorRegistry, metric: str, label: str, suffix: str = "_total"
) -> dict[str, float]:
    """A metric's current value summed over every label but ``label``."""
    totals: dict[str, float] = defaultdict(float)
    for family in registry.collect():
        if family.name != metric:
            continue
        for sample in family.samples:
            if sample.name == metric + suffix:
                totals[sample.labels.get(label, "")] += sample.value
    return dict(totals)


# Relative to the admin mount.
routes: list[BaseRoute] = [Route("/status", status, methods=["GET"])]
