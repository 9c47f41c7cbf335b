"""Micro-benchmark: placement's cost per request (order + placed_on) at 16 servers.

    PYTHONPATH=src python -m bench.placement_cost

The issue's bar is 0.2 ms added per request. Prompts: a shared 4 KB system prompt and a
growing conversation (about 70 blocks), so the prefix index lookups are the real ones.
"""

from __future__ import annotations

import time
from typing import Any

from nobusy.routing.placement import Placement, ServerView
from nobusy.settings import Route
from nobusy.upstreams.server_metrics import Reading, ServerSignals


def measure(servers: int = 16, requests: int = 20000) -> dict[str, float]:
    """CPU and wall milliseconds per request of ordering the servers and noting the pick."""
    now = time.monotonic()
    views = {}
    for i in range(servers):
        signals = ServerSignals(slots=8)
        signals.reading, signals.at = Reading(running=i % 8, waiting=i % 3, kv_usage=0.5), now
        views[f"s{i}"] = ServerView(signals, lambda: 0, lambda: 8)
    placement = Placement(views)
    routes = [Route(name) for name in views]
    system = "You answer from the handbook. " * 140  # ≈ 4 KB
    bodies: list[dict[str, Any]] = []
    for i in range(requests):
        turns = [
            {"role": "user", "content": f"question {j} of chat {i % 50}"} for j in range(i % 6)
        ]
        bodies.append({"messages": [{"role": "system", "content": system}, *turns]})
    start, cpu = time.perf_counter(), time.process_time()
    for body in bodies:
        first = placement.order(routes, body)[0]
        placement.placed_on(first.upstream, body)
    wall = (time.perf_counter() - start) / requests * 1000
    per = (time.process_time() - cpu) / requests * 1000
    return {"servers": servers, "requests": requests, "cpu_ms": per, "wall_ms": wall}


def main(servers: int = 16, requests: int = 20000) -> None:
    got = measure(servers, requests)
    # CPU time is the cost; wall time also counts waiting for a core on a busy machine.
    print(
        f"placement at {servers} servers: {got['cpu_ms']:.4f} ms CPU per request "
        f"({got['wall_ms']:.4f} ms wall)"
    )


if __name__ == "__main__":
    main()
