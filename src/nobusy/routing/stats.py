"""Live statistics of each upstream in this process: its circuit, load and time to first token.

Routing reads them to order routes and skip ejected ones; the admin endpoint, ``/metrics``,
``/readyz`` and ``nobusy check`` show them. (Active health checks are ``routing.checks``; the
health endpoints are ``api/ops.py``.)
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nobusy.routing.circuit import Circuit

__all__ = ["UpstreamStats"]

# Smoothing for the time-to-first-token average: recent requests count most, as in
# Finagle's and Envoy's peak-EWMA balancers.
_ALPHA = 0.2
_DEFAULT_TTFT = 1.0


@dataclass
class UpstreamStats:
    """Live figures for one upstream in this process."""

    name: str
    kind: str
    circuit: Circuit
    in_flight: int = 0
    attempts: int = 0
    failures: int = 0
    ttft_ewma: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    last_ok_at: float | None = None
    _ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=256))

    def observe_ttft(self, seconds: float) -> None:
        self._ttfts.append(seconds)
        previous = self.ttft_ewma
        self.ttft_ewma = seconds if previous is None else previous + _ALPHA * (seconds - previous)

    def ttft_quantile(self, q: float) -> float | None:
        if len(self._ttfts) < 20:
            return None
        cuts = statistics.quantiles(self._ttfts, n=100, method="inclusive")
        return cuts[min(98, max(0, round(q * 100) - 1))]

    def score(self) -> float:
        """Lower is better: expected wait, from requests in flight and recent first-token time."""
        return (self.in_flight + 1) * (self.ttft_ewma or _DEFAULT_TTFT)

    def note_failure(self, message: str) -> None:
        self.failures += 1
        self.last_error = message
        self.last_error_at = time.time()

    def note_success(self) -> None:
        self.last_ok_at = time.time()

    def failing(self, window: float, now: float | None = None) -> bool:
        """True when the last real outcome, within ``window`` seconds, was a failure."""
        if self.last_error_at is None:
            return False
        now = time.time() if now is None else now
        recent = now - self.last_error_at <= window
        return recent and (self.last_ok_at is None or self.last_error_at > self.last_ok_at)

    def why_not(self, window: float) -> str | None:
        """Why a request sent now would not be answered here, or None when it may be."""
        circuit = self.circuit
        if not circuit.available():
            wait = circuit.retry_in()
            after = f" after: {circuit.reason}" if circuit.reason else ""
            if wait > 0:
                return f"circuit open for {wait:.0f}s more{after}"
            return f"circuit half-open, its probe request under way{after}"
        if self.failing(window):
            return f"its last attempt failed: {self.last_error}"
        return None

    def snapshot(self) -> dict[str, Any]:
        circuit = self.circuit
        return {
            "name": self.name,
            "kind": self.kind,
            "state": circuit.state.value,
            "retry_in": round(circuit.retry_in(), 3),
            "ejections": circuit.ejections,
            "in_flight": self.in_flight,
            "attempts": self.attempts,
            "failures": self.failures,
            "ttft_ewma": None if self.ttft_ewma is None else round(self.ttft_ewma, 4),
            "ttft_p50": self.ttft_quantile(0.5),
            "ttft_p95": self.ttft_quantile(0.95),
            "last_error": self.last_error or None,
            "last_error_at": self.last_error_at,
            "last_ok_at": self.last_ok_at,
        }
