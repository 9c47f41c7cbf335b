"""Prometheus metrics for one app: requests, latency, time to first token, tokens, errors.

Each app owns its registry, so two apps in one process (tests, workers) never share counters.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

# Latency buckets reach minutes: an LLM answer can stream for a long time.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The counters nobusy keeps, labelled by alias and upstream."""

    def __init__(self) -> None:
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "nobusy_requests",
            "Chat requests by alias, upstream that answered, and outcome.",
            ["alias", "upstream", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "nobusy_request_duration_seconds",
            "Whole request time, first byte in to last byte out.",
            ["alias", "upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "nobusy_time_to_first_token_seconds",
            "From the request's start to its first token.",
            ["alias", "upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "nobusy_tokens",
            "Tokens by alias, upstream and direction (prompt or completion).",
            ["alias", "upstream", "type"],
            registry=r,
        )
        self.errors = Counter(
            "nobusy_errors",
            "Errors returned to clients, by alias and error code.",
            ["alias", "code"],
            registry=r,
        )
        self.attempts = Counter(
            "nobusy_upstream_attempts",
            "Attempts at each upstream, by outcome (ok or error code).",
            ["upstream", "outcome"],
            registry=r,
        )
        self.in_flight = Gauge(
            "nobusy_in_flight_requests",
            "Chat requests being answered now, by alias.",
            ["alias"],
            registry=r,
        )
        self.upstream_up = Gauge(
            "nobusy_upstream_up",
            "1 when the upstream's last attempt succeeded, 0 when it failed.",
            ["upstream"],
            registry=r,
        )

    def attempt(self, upstream: str, outcome: str) -> None:
        self.attempts.labels(upstream, outcome).inc()
        self.upstream_up.labels(upstream).set(1 if outcome == "ok" else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
