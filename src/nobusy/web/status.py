"""``GET /v1/nobusy/status``: running totals for the console's status board, for the admin key
(checked by the admin mount's guard, ``nobusy.api.admin``).

Totals only, never rates: the page polls and differences two answers over their ``time``, so
the server keeps no history and two open boards cannot disturb each other. Counters are this
process's (with ``--workers N``, of the worker that answered); usage per key comes from the
shared database, so it covers every worker.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.db import DB_NAME, timestamp
from nobusy.responses import JSONResponse
from nobusy.state import app_state

__all__ = ["USAGE_WINDOW", "counter_totals", "key_usage", "routes", "status"]

# How far back the board's "usage per key" looks.
USAGE_WINDOW = timedelta(hours=1)


async def status(request: Request) -> Response:
    """Requests, tokens, errors and in-flight totals now, the queue, and usage per key."""
    state = app_state(request)
    registry = state.metrics.registry
    requests = counter_totals(registry, "nobusy_requests", "outcome")
    tokens = counter_totals(registry, "nobusy_tokens", "type")
    errors = counter_totals(registry, "nobusy_errors", "code")
    in_flight = counter_totals(registry, "nobusy_in_flight_requests", "alias", suffix="")
    keys = await run_in_threadpool(key_usage, state.settings.data_dir, USAGE_WINDOW)
    return JSONResponse(
        {
            "object": "nobusy.status",
            "time": time.time(),
            "started": state.metrics.started,
            "requests": {"total": sum(requests.values()), "by_outcome": requests},
            "tokens": {"total": sum(tokens.values()), "by_type": tokens},
            "errors": {"total": sum(errors.values()), "by_code": errors},
            "in_flight": sum(in_flight.values()),
            "queue": state.router.capacity.queue.depth(),
            "keys": {"window": int(USAGE_WINDOW.total_seconds()), "data": keys},
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


def key_usage(data_dir: Path, window: timedelta) -> list[dict[str, Any]]:
    """Requests and tokens per key over the last ``window``, busiest first, from the usage log."""
    path = data_dir / DB_NAME
    if not path.exists():
        return []
    since = timestamp(datetime.now(UTC) - window)
    # Read-only and separate from the writers' connection: this must never take a write lock.
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=1)) as conn:
            rows = conn.execute(
                "SELECT usage.key_id, keys.name, COUNT(*), SUM(outcome = 'ok'), "
                "SUM(prompt_tokens), SUM(completion_tokens) FROM usage "
                "LEFT JOIN keys ON keys.id = usage.key_id WHERE time >= ? "
                "GROUP BY usage.key_id ORDER BY COUNT(*) DESC",
                [since],
            ).fetchall()
    except sqlite3.OperationalError:  # not migrated yet, or busy past the timeout: skip a beat
        return []
    return [
        {
            "key_id": key_id,
            "name": name,
            "requests": n,
            "ok": ok,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
        }
        for key_id, name, n, ok, prompt, completion in rows
    ]


# Relative to the admin mount.
routes: list[BaseRoute] = [Route("/status", status, methods=["GET"])]
