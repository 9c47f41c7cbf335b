"""From a model alias to an answer that has started: try its routes until one speaks.

An attempt counts as started at its first token (content, reasoning or a tool call), not at its
HTTP headers or a role-only chunk, so an upstream that fails or stalls before saying anything
is replaced without the client noticing. Each attempt's time to first token counts from that
attempt's start; keep-alive comments never count as progress.

Routes are tried in the order ``balancing.plan_routes`` gives (tiers, then power of two choices
over load and time to first token), skipping upstreams whose circuit is open. Attempts per
request are bounded, and a failover away from an upstream spends that upstream's retry budget,
so a failing upstream cannot multiply the load on the others. With ``hedge`` set on an alias,
a first route that stays silent past its p95 time to first token gets a parallel second
attempt; the first to speak wins and the other is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from nobusy.admission.capacity import Capacity, Ticket
from nobusy.balancing import plan_routes
from nobusy.budget import Budget
from nobusy.circuit import Circuit
from nobusy.continuation_probe import ContinuationModes
from nobusy.errors import (
    AllUpstreamsFailed,
    ModelNotFound,
    RetryBudgetSpent,
    UpstreamAuthFailed,
    UpstreamEjected,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRejectedRequest,
    UpstreamTimeout,
)
from nobusy.failover import AnswerStream
from nobusy.health import UpstreamHealth
from nobusy.metrics import Metrics
from nobusy.settings import ModelAlias, Route, Settings
from nobusy.upstreams.base import Chunk, Upstream, UpstreamCall, UpstreamSettings, has_token

__all__ = ["Answer", "Attempt", "Router"]

log = logging.getLogger("nobusy.routing")

_FLOOR_PAUSE = 1.0  # seconds an upstream rests after refusing a lone request at a limit of one


class Attempt:
    """One request to one upstream, and its bookkeeping: load, circuit, metrics."""

    def __init__(self, router: Router, route: Route, call: UpstreamCall, who: str = "") -> None:
        self.route = route
        self.upstream = router.upstreams[route.upstream]
        self.health = router.health[route.upstream]
        self.metrics = router.metrics
        self.iterator: AsyncIterator[Chunk] = aiter(self.upstream.stream(call))
        self.prefix: list[Chunk] = []
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.ended = False
        self.who = who
        self.capacity = router.capacity
        self.sent = router.capacity.load(route.upstream)  # our load when this was sent
        self.health.in_flight += 1
        self.health.attempts += 1
        self.health.circuit.begin()
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
        self.health.observe_ttft(ttft)
        self.capacity.first_token(self.route.upstream, ttft, self.sent)

    async def succeed(self) -> None:
        if not self._end("ok"):
            return
        # Like refusals, successes count for the failure rate only at a load the limit still
        # allows: counting the ones sent above it, and not the refusals, would hide a broken
        # upstream behind the answers it gave before its limit came down.
        self.health.circuit.success(counted=self._within_limit())
        self.health.note_success()
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
        circuit = self.health.circuit
        if isinstance(exc, UpstreamRejectedRequest):
            circuit.success()  # the upstream is fine; the request was not
            return
        self.health.note_failure(exc.message)
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
        self.health.circuit.cancelled()
        self.metrics.attempt(self.route.upstream, "cancelled")

    def _end(self, outcome: str) -> bool:
        if self.ended:
            return False
        self.ended = True
        self.health.in_flight -= 1
        self.capacity.release(
            self.route.upstream, outcome, time.perf_counter() - self.started, self.who, self.sent
        )
        return True


@dataclass(slots=True)
class Answer:
    """An answer whose first token has arrived: where it comes from, and all its chunks."""

    route: Route
    chunks: AsyncIterator[Chunk]
    first_token_at: float
    failures: list[UpstreamError] = field(default_factory=list)
    stream: AnswerStream | None = None
    overflow: bool = False
    cancelled: list[str] = field(default_factory=list)  # a hedge's loser: attempted too

    @property
    def upstream(self) -> str:
        return f"{self.route} (overflow)" if self.overflow else str(self.route)

    def tried(self) -> list[str]:
        """Upstreams attempted so far, in order, ending with the one answering now."""
        failed = [f.upstream for f in self.failures if f.attempted]
        final = self.stream.attempt.route if self.stream is not None else self.route
        return [*self.cancelled, *failed, final.upstream]


@dataclass(slots=True)
class Reservation:
    """A slot taken on a route, the routes left to fail over to, and those skipped as ejected."""

    route: Route
    rest: deque[Route]
    failures: list[UpstreamError]
    overflow: bool = False
    who: str = ""


class Router:
    """Holds the upstreams, their health and the alias table; opens answers with failover."""

    def __init__(
        self,
        settings: Settings,
        upstreams: Mapping[str, Upstream],
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.models: dict[str, ModelAlias] = dict(settings.models)
        self.upstreams = dict(upstreams)
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.health = {
            name: UpstreamHealth(name, spec.kind, Circuit(spec.circuit, name=name))
            for name, spec in settings.upstreams.items()
        }
        self.retry_budgets = {name: self._budget() for name in self.upstreams}
        self.continuations = ContinuationModes()  # how each upstream continues a cut answer
        # With several worker processes the ceilings are counted together across them (the
        # app shares them at start-up: admission/shared.py); each still adapts its own limit.
        self.capacity = Capacity(
            {name: spec.max_concurrency for name, spec in settings.upstreams.items()},
            max(1, settings.initial_concurrency // settings.workers),
        )
        self.capacity.pause = self._pause
        for name, limit in self.capacity.limits.items():
            limit.name = limit.name or name  # for its log lines
        self.hedge_budgets = {
            alias: Budget(spec.hedge.budget, 1, settings.retry_window)
            for alias, spec in self.models.items()
            if spec.hedge is not None
        }

    def _budget(self) -> Budget:
        s = self.settings
        return Budget(s.retry_budget, s.retry_budget_min, s.retry_window)

    def aliases(self) -> list[str]:
        return list(self.models)

    def alias(self, name: str) -> ModelAlias:
        spec = self.models.get(name)
        if spec is None:
            available = ", ".join(self.models) or "(none)"
            raise ModelNotFound(
                f"The model '{name}' does not exist. Available models: {available}.",
                param="model",
            )
        return spec

    def usable(self, upstream: str) -> bool:
        return self.health[upstream].circuit.available()

    def _pause(self, upstream: str) -> float:
        """Seconds until ``upstream`` may be sent a request (a moment while a probe is out)."""
        circuit = self.health[upstream].circuit
        return 0.0 if circuit.available() else max(circuit.retry_in(), 0.05)

    def reserve(self, alias: str, who: str = "", priority: str = "normal") -> Reservation | None:
        """Take a slot on the first usable route with room (overflow routes last), or None."""
        spec = self.alias(alias)
        self.capacity.note(who, priority)
        failures: list[UpstreamError] = []
        usable: list[Route] = []
        for routes, overflow in ((spec.routes, False), (spec.overflow, True)):
            ordered, skipped = plan_routes(routes, self.health, self.rng)
            failures.extend(self._ejected(r) for r in skipped)
            for i, route in enumerate(ordered):
                if self.capacity.try_take(route.upstream, who):
                    rest = deque(ordered[i + 1 :]) if not overflow else deque()
                    return Reservation(route, rest, failures, overflow, who)
            usable.extend(ordered)
        if not usable:
            raise AllUpstreamsFailed(alias, failures)
        return None

    def enqueue(
        self, alias: str, key: str, priority: str, patience: float, front: bool = False
    ) -> Ticket:
        """Wait for a slot on any route of the alias (QueueFull if it would take long); one
        whose circuit is open hands out no slot until it may be used again."""
        spec = self.alias(alias)
        upstreams = frozenset(r.upstream for r in (*spec.routes, *spec.overflow))
        return self.capacity.enqueue(upstreams, key, priority, patience, front)

    def reservation_for(self, alias: str, upstream: str, who: str = "") -> Reservation:
        """The reservation a queue ticket became: the granted upstream's route first."""
        spec = self.alias(alias)
        main = [r for r in spec.routes if r.upstream == upstream]
        route = main[0] if main else next(r for r in spec.overflow if r.upstream == upstream)
        ordered, _ = plan_routes(spec.routes, self.health, self.rng)
        rest = deque(r for r in ordered if r != route) if main else deque()
        return Reservation(route, rest, [], overflow=not main, who=who)

    async def open(
        self, alias: str, body: dict[str, Any], request_id: str, reservation: Reservation
    ) -> Answer:
        """Start the reserved route, failing over until one produces a token."""
        spec = self.alias(alias)
        failures = reservation.failures
        queue = reservation.rest
        route: Route | None = reservation.route
        who = reservation.who
        attempts = 0
        cancelled: list[str] = []
        while route is not None:
            attempt = self.start(route, body, request_id, who)
            attempts += 1
            hedge = spec.hedge is not None and attempts == 1 and bool(queue)
            try:
                if hedge:
                    winner, extra, cancelled = await self._hedged(
                        alias, attempt, queue, failures, body, request_id, who
                    )
                    attempts += extra
                    if winner is None:  # both racers failed, and both are in failures
                        route = self.next_route(queue, failures, attempts, who)
                        continue
                    attempt = winner
                else:
                    await attempt.first_token()
            except UpstreamError as exc:
                await attempt.fail(exc)
                if not exc.retryable:
                    raise
                failures.append(exc)
                failed = attempt.route
                route = self.next_route(queue, failures, attempts, who)
                log.warning(
                    "request %s: %s failed before its first token: %s; %s",
                    request_id, failed, exc.message,
                    f"failing over to {route}" if route is not None else "no route left",
                )  # fmt: skip
                continue
            except BaseException:
                await attempt.cancel()
                raise
            stream = AnswerStream(self, body, request_id, attempt, queue, failures, attempts, who)
            assert attempt.first_token_at is not None
            return Answer(
                attempt.route,
                stream.chunks(),
                attempt.first_token_at,
                failures,
                stream,
                overflow=reservation.overflow and attempt.route == reservation.route,
                cancelled=cancelled,
            )
        raise AllUpstreamsFailed(alias, failures)

    def next_route(
        self, queue: deque[Route], failures: list[UpstreamError], attempts: int, who: str = ""
    ) -> Route | None:
        """The next usable route, if the attempt limit and the retry budget allow another."""
        if attempts >= self.settings.max_attempts:
            return None
        last = failures[-1] if failures else None
        if last is not None and not isinstance(last, UpstreamEjected):
            budget = self.retry_budgets.get(last.upstream)
            if budget is not None and not budget.try_spend():
                failures.append(
                    RetryBudgetSpent("retry budget spent: not failing over", upstream=last.upstream)
                )
                return None
        while queue:
            route = queue.popleft()
            if not self.health[route.upstream].circuit.available():
                failures.append(self._ejected(route))
            elif not self.capacity.try_take(route.upstream, who):
                failures.append(
                    UpstreamOverloaded("at its concurrency limit", upstream=route.upstream)
                )
            else:
                return route
        return None

    def start(self, route: Route, body: dict[str, Any], request_id: str, who: str = "") -> Attempt:
        """Begin an attempt at ``route``, whose slot the caller has taken (nothing is sent
        until the attempt is read)."""
        call = UpstreamCall(model=route.model, body=body, request_id=request_id)
        return Attempt(self, route, call, who)

    async def _hedged(
        self,
        alias: str,
        first: Attempt,
        queue: deque[Route],
        failures: list[UpstreamError],
        body: dict[str, Any],
        request_id: str,
        who: str = "",
    ) -> tuple[Attempt | None, int, list[str]]:
        """Race a second route against a first that is slow to speak.

        Returns the racer that spoke first (None when both failed), the attempts started
        besides ``first``, and the upstream cancelled because the other spoke first. Every
        racer that failed is in ``failures``; an error before the race is raised."""
        hedge = self.models[alias].hedge
        assert hedge is not None
        after = hedge.after
        if after == "p95":
            after = first.health.ttft_quantile(0.95) or first.settings.first_token_timeout
        task = asyncio.ensure_future(first.first_token())
        try:
            done, _ = await asyncio.wait({task}, timeout=float(after))
        except BaseException:
            # The client left while the first route was silent: asyncio.wait does not cancel
            # the read, and the attempt cannot be closed while it is still reading.
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        if done or not self.hedge_budgets[alias].try_spend():
            self.hedge_budgets[alias].note()
            await task
            return first, 0, []
        self.hedge_budgets[alias].note()
        route = self.next_route(queue, failures, 1, who)  # notes the routes it skips
        if route is None:
            await task
            return first, 0, []
        second = self.start(route, body, request_id, who)
        self.metrics.hedges.labels(alias).inc()
        racers = {task: first, asyncio.ensure_future(second.first_token()): second}
        winner: Attempt | None = None
        errors: list[UpstreamError] = []
        try:
            pending = set(racers)
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:  # both may finish in the same round
                    exc = finished.exception()
                    attempt = racers[finished]
                    if exc is None and winner is None:
                        winner = attempt
                    elif exc is None:
                        await attempt.cancel()  # it spoke too, but second
                    elif isinstance(exc, UpstreamError):
                        await attempt.fail(exc)
                        errors.append(exc)
                    else:
                        raise exc
        finally:
            # Everything but the winner ends here: the loser, or both if the client left.
            for racer, attempt in racers.items():
                if attempt is not winner and not racer.done():
                    racer.cancel()
            await asyncio.gather(*racers, return_exceptions=True)
            for attempt in racers.values():
                if attempt is not winner:
                    await attempt.cancel()  # a no-op for an attempt already ended
        failures.extend(errors)  # each was an attempt, whichever spoke
        if winner is None:
            for exc in errors:
                if not exc.retryable:
                    raise exc  # the request itself is wrong: no other route will take it
            return None, 1, []
        other = second if winner is first else first
        return winner, 1, [] if errors else [other.route.upstream]

    def _ejected(self, route: Route) -> UpstreamEjected:
        circuit = self.health[route.upstream].circuit
        wait = circuit.retry_in()
        reason = f" after: {circuit.reason}" if circuit.reason else ""
        return UpstreamEjected(
            f"circuit open for {wait:.0f}s more{reason}",
            upstream=route.upstream,
            retry_after=wait,
        )

    async def aclose(self) -> None:
        await asyncio.gather(*(u.aclose() for u in self.upstreams.values()))


async def _aclose(iterator: AsyncIterator[Chunk]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
