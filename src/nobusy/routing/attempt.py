"""One request to one upstream, from its start to its end, and what it teaches the router.

An attempt counts as started at its first token (content, reasoning or a tool call), not at
its HTTP headers or a role-only chunk, so an upstream that fails or stalls before saying
anything is replaced without the client noticing. Its time to first token counts from the
attempt's own start; keep-alive comments never count as progress. However it ends (success,
failure, cancellation), it ends once: its slot is released, its circuit and adaptive limit
learn from the outcome, and its metrics are counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from nobusy.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRejectedRequest,
    UpstreamTimeout,
)
from nobusy.routing.router import Router
from nobusy.settings import Route
from nobusy.upstreams.base import Chunk, UpstreamCall, UpstreamSettings, has_token

__all__ = ["Attempt"]

_FLOOR_PAUSE = 1.0  # seconds an upstream rests after refusing a lone request at a limit of one


class Attempt:
    """One request to one upstream, and its bookkeeping: load, circuit, metrics."""

    def __init__(
        self, router: Router, route: Route, call: UpstreamCall, who: str = "", estimate: int = 0
    ) -> None:
        self.route = route
        self.upstream = router.upstreams[route.upstream]
        self.stats = router.stats[route.upstream]
        self.metrics = router.metrics
        self.iterator: AsyncIterator[Chunk] = aiter(self.upstream.stream(call))
        self.prefix: list[Chunk] = []  # what was read up to the first token
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.ended = False
        self.who = who
        # Tokens counted in the upstream's tpm window when sent, and those it reported using
        # (None: unknown, the estimate stands).
        self.estimate = estimate
        self.used: int | None = None
        self.capacity = router.capacity
        self.tiers = router.tiers
        self.sent = router.capacity.load(route.upstream)  # our load when this was sent
        self.stats.in_flight += 1
        self.stats.attempts += 1
        self.stats.circuit.begin()
        router.retry_budgets[route.upstream].note()

    @property
    def settings(self) -> UpstreamSettings:
        return self.upstream.settings

    async def first_token(self) -> None:
        """Read until the first token, within ``first_token_timeout`` of this attempt's start."""
        timeout = self.settings.first_token_timeout
        try:
            async with asyncio.timeout(max(0.0, self.started + timeout - time.perf_counter())):
                async for chunk in self.iterator:
                    self.prefix.append(chunk)
                    if has_token(chunk):
                        break
        except TimeoutError:
            raise UpstreamTimeout(
                f"timed out after {timeout:g} s waiting for the first token",
                upstream=self.route.upstream,
            ) from None
        self.first_token_at = time.perf_counter()
        ttft = self.first_token_at - self.started
        self.stats.observe_ttft(ttft)
        self.capacity.first_token(self.route.upstream, ttft, self.sent)

    async def succeed(self, used: int | None = None) -> None:
        """The answer ended well; ``used``: the tokens the upstream reported for it."""
        self.used = used
        if not self._end("ok"):
            return
        # Like refusals, successes count for the failure rate only at a load the limit still
        # allows: counting the ones sent above it, and not the refusals, would hide a broken
        # upstream behind the answers it gave before its limit came down.
        self.stats.circuit.success(counted=self._within_limit())
        self.stats.note_success()
        self.metrics.attempt(self.route.upstream, "ok")

    async def fail(self, exc: UpstreamError) -> None:
        # Overload answers and silence before the first token teach the adaptive limit that
        # this upstream is full; other failures say nothing about its capacity.
        overload = isinstance(exc, UpstreamOverloaded) or (
            isinstance(exc, UpstreamTimeout) and self.first_token_at is None
        )
        if not self._end("overload" if overload else "ignore"):
            return
        await _aclose(self.iterator)
        self.metrics.attempt(self.route.upstream, exc.code or "upstream_error")
        circuit = self.stats.circuit
        if isinstance(exc, UpstreamRejectedRequest):
            circuit.success()  # the upstream is fine; the request was not
            return
        self.stats.note_failure(exc.message)
        busy = isinstance(exc, UpstreamOverloaded) and exc.retry_after is None
        limit = self.capacity.limits[self.route.upstream]
        if busy and self.sent[0] <= 1 and limit.current <= limit.floor:
            # Refused with nothing else of ours in flight, at a limit that cannot come down:
            # it cannot take even one now. Pause it a moment, as a Retry-After would; its
            # circuit counts the failure, and a probe brings it back.
            circuit.failure(exc.message, retry_after=_FLOOR_PAUSE)
            return
        if busy and not self._within_limit():
            # "Busy" for a request sent at a load above what the limit now allows is a
            # statement about capacity the limit has already learned. Ejecting the upstream
            # for it would turn one burst into 30 s of failures for everyone (found by the
            # admission benchmark). "Busy" at a load the limit still allows counts: an
            # upstream that keeps refusing however little it is sent is broken, not full.
            return
        circuit.failure(
            exc.message,
            retry_after=exc.retry_after,
            misconfigured=isinstance(exc, UpstreamAuthFailed),
        )

    def _within_limit(self) -> bool:
        """Was this attempt sent at a load the adaptive limit still allows (or one more)?"""
        return self.sent[0] <= self.capacity.limits[self.route.upstream].current + 1

    async def cancel(self) -> None:
        if not self._end("ignore"):
            return
        await _aclose(self.iterator)
        self.stats.circuit.cancelled()
        self.metrics.attempt(self.route.upstream, "cancelled")

    def _end(self, outcome: str) -> bool:
        if self.ended:
            return False
        self.ended = True
        self.stats.in_flight -= 1
        if outcome == "ok" and self.first_token_at is not None:
            # From the first token on, the answer held a server slot: its tier's service rate.
            self.tiers.finished(self.route.upstream, time.perf_counter() - self.first_token_at)
        used = self.estimate if self.used is None else self.used
        self.capacity.release(
            self.route.upstream,
            outcome,
            time.perf_counter() - self.started,
            self.who,
            self.sent,
            (self.estimate, used),
        )
        return True


async def _aclose(iterator: AsyncIterator[Chunk]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
