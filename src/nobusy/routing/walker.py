"""One request's walk over the routes of its alias, from a slot to an attempt that speaks.

A ``Walker`` owns everything one request's routing needs: who asks (key, priority, patience),
the plan (the route whose slot it holds and the routes left to fail over to), the failures met
so far, the attempts started and the one answering now. Every "try the next route" asks it:
the failover before the first token, the hedge, and the continuation after the first token
(``routing.answer``). That loop is ``Walker._walk``, the only one.

Attempts per request are bounded, and a failover away from an upstream spends that upstream's
retry budget, so a failing upstream cannot multiply the load on the others. With ``hedge`` set
on an alias, a first route that stays silent past its p95 time to first token gets a parallel
second attempt; the first to speak wins and the other is cancelled. When every route refused
only with "busy", the request goes back to the front of the queue, within its patience.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from nobusy.admission.capacity import Ticket
from nobusy.errors import (
    AllUpstreamsFailed,
    QueueTimeout,
    RetryBudgetSpent,
    UpstreamEjected,
    UpstreamError,
    UpstreamOverloaded,
)
from nobusy.routing.attempt import Attempt
from nobusy.routing.capabilities import fitting
from nobusy.routing.continuation import TEXT_CONTINUATION, Method
from nobusy.routing.router import Router
from nobusy.settings import Route
from nobusy.upstreams.base import UpstreamCall, is_text_completion

__all__ = ["BodyFor", "Walker", "only_busy"]

log = logging.getLogger("nobusy.routing")

# The request body to send on a route (a continuation's depends on the route's upstream).
BodyFor = Callable[[Route], Awaitable[dict[str, Any]]]
# A route to take a slot on: (route, routes to fail over to, overflow?, failures before it).
_Candidate = tuple[Route, list[Route], bool, int]


class Walker:
    """One request's routing: its slot or queue place, its plan, its failures and attempts."""

    def __init__(
        self,
        router: Router,
        alias: str,
        body: dict[str, Any],
        request_id: str,
        who: str = "",
        priority: str = "normal",
        patience: float | None = None,
        estimate: int = 0,
    ) -> None:
        self.router = router
        self.alias = alias
        # Only the routes that can take this request (images, text completions, FIM).
        self.spec = fitting(router, alias, body)
        self.body = body
        self.request_id = request_id
        self.who = who
        self.priority = priority
        self.patience = router.settings.default_max_wait if patience is None else patience
        self.estimate = estimate  # tokens, for the upstreams' tpm (``admission.rates``)
        self.started_at = time.monotonic()
        self.deadline = self.started_at + self.patience
        # A queue place not yet turned into a slot: given up if the request ends first.
        self.ticket: Ticket | None = None
        self.allowed: frozenset[str] | None = None  # upstreams the queue place may take
        self.spilled = False  # left the queue for a dearer tier's free slot (``spill_after``)
        self.queue_ms = 0.0  # time waited for slots, over every wait
        # The plan, made when a slot is taken (again after a requeue).
        self.reserved: Route | None = None  # the route whose slot was taken
        self.overflow = False  # ... an overflow route, with nothing to fail over to
        self.rest: deque[Route] = deque()
        self.failures: list[UpstreamError] = []
        self.attempts = 0  # started, continuations and hedges included
        self.cancelled: list[str] = []  # a hedge's loser: attempted too
        self.attempt: Attempt | None = None  # the one that spoke, answering now

    # --- a slot --------------------------------------------------------------------------------

    def reserve(self) -> bool:
        """Take a slot on the first usable route with room (overflow routes last) and return
        True; else join the queue (QueueFull at once if the wait would outlast the patience)
        and return False. AllUpstreamsFailed when no route is usable at all. (Slots that are
        leases from the fleet, with ``state``, need ``take``.)"""
        failures, candidates = self._candidates()
        for route, rest, overflow, skipped in candidates:
            if self.router.capacity.try_take(route.upstream, self.who, self.estimate):
                self._plan(route, rest, failures[:skipped], overflow)
                return True
        return self._queue(failures, candidates)

    async def take(self) -> bool:
        """``reserve``, where a slot may be a lease from the fleet (a round trip each)."""
        if self.router.capacity.leases is None:
            return self.reserve()  # without state: no slot needs a round trip
        failures, candidates = self._candidates()
        for route, rest, overflow, skipped in candidates:
            if await self.router.capacity.take(route.upstream, self.who, self.estimate):
                self._plan(route, rest, failures[:skipped], overflow)
                return True
        return self._queue(failures, candidates)

    def _candidates(self) -> tuple[list[UpstreamError], list[_Candidate]]:
        """The failures of routes skipped (circuit open), and the usable routes in the order
        to try them, each with the routes to fail over to after it, whether it is an overflow
        route, and how many of the failures were met before it. With ``spill_after`` on the
        alias, only the tier ``routing.spill`` chooses and the cheaper ones are candidates
        (failover still reaches every route)."""
        router, spec = self.router, self.spec
        router.capacity.note(self.who, self.priority)
        failures: list[UpstreamError] = []
        ordered, skipped = router.plan(spec.routes, self.body)
        failures.extend(router.ejected(r) for r in skipped)
        main_failures = len(failures)
        extra, skipped = router.plan(spec.overflow, self.body)
        failures.extend(router.ejected(r) for r in skipped)
        picks = [*ordered, *extra]
        self.allowed = None  # the queue place may take any route's slot, open circuits' too
        if spec.spill_after is not None and picks:
            picks = router.spill(ordered, extra, spec.spill_after)
            self.allowed = frozenset(r.upstream for r in picks)
        candidates: list[_Candidate] = []
        for route in picks:
            if route in extra:
                candidates.append((route, [], True, len(failures)))
            else:
                i = ordered.index(route)
                candidates.append((route, ordered[i + 1 :], False, main_failures))
        return failures, candidates

    def _queue(self, failures: list[UpstreamError], candidates: list[_Candidate]) -> bool:
        if not candidates:
            raise AllUpstreamsFailed(self.alias, failures)
        self._enqueue(self.patience)
        return False

    def positions(self) -> AsyncIterator[tuple[int, float]]:
        """While queued: (position, estimated seconds) now and every second."""
        assert self.ticket is not None
        return self._updates(self.ticket)

    async def _updates(self, ticket: Ticket) -> AsyncIterator[tuple[int, float]]:
        """The ticket's updates; with ``spill_after``, a waiter whose estimate grows past it
        (a cheaper tier slowed or lost a server since it queued) takes a slot on a dearer
        tier when one is free, and the updates end there."""
        spill = self.spec.spill_after
        updates = ticket.updates()
        try:
            async for position, eta in updates:
                yield position, eta
                if spill is not None and eta > spill and self._spill_over(ticket):
                    return
        finally:
            await updates.aclose()  # left early (spilled, or the client left): leave the queue

    def _spill_over(self, ticket: Ticket) -> bool:
        """Take a slot on a route the queue place cannot use, if one is free now."""
        router, spec = self.router, self.spec
        if router.capacity.leases is not None:
            return False  # a fleet's lease is a round trip: the queue place keeps waiting
        ordered, _ = router.plan(spec.routes, self.body)
        extra, _ = router.plan(spec.overflow, self.body)
        waiting_for = ticket.waiter.upstreams
        for route in (*ordered, *extra):
            if route.upstream in waiting_for:
                continue
            if router.capacity.try_take(route.upstream, self.who, self.estimate):
                self.queue_ms += round(ticket.waited * 1000, 3)
                rest = ordered[ordered.index(route) + 1 :] if route in ordered else []
                self._plan(route, rest, [], overflow=route not in ordered)
                self.spilled = True
                return True
        return False

    async def granted(self) -> None:
        """Wait for the queue place's slot (a cancelled wait leaves the queue), then plan the
        walk from the granted route (already planned if the wait spilled to a dearer tier)."""
        ticket = self.ticket
        assert ticket is not None
        if not self.spilled:
            async for _ in self._updates(ticket):
                pass
        if self.spilled:
            ticket.abandon()  # the dearer tier's slot is the walk's; no queue place is left
            self.ticket = None
            return
        upstream = ticket.upstream
        self.ticket = None  # the slot is the walk's now: an attempt releases it
        self.queue_ms += round(ticket.waited * 1000, 3)
        spec = self.spec
        main = [r for r in spec.routes if r.upstream == upstream]
        route = main[0] if main else next(r for r in spec.overflow if r.upstream == upstream)
        ordered, _ = self.router.plan(spec.routes, self.body)
        rest = [r for r in ordered if r != route] if main else ()
        self._plan(route, rest, [], overflow=not main)

    def close(self) -> None:
        """Give up a queue place not yet turned into a slot (idempotent)."""
        if self.ticket is not None:
            self.ticket.abandon()
            self.ticket = None

    def _enqueue(self, patience: float, front: bool = False) -> None:
        self.spilled = False
        self.ticket = self.router.enqueue(
            self.alias,
            self.who,
            self.priority,
            patience,
            front,
            self.estimate,
            self.spec,
            self.allowed,
        )

    def _plan(
        self, route: Route, rest: Iterable[Route], failures: list[UpstreamError], overflow: bool
    ) -> None:
        self.reserved, self.rest, self.failures = route, deque(rest), failures
        self.router.placed(route, self.body)
        self.overflow = overflow
        self.attempts = 0
        self.cancelled = []
        self.attempt = None

    # --- attempts -------------------------------------------------------------------------------

    async def first_attempt(self) -> Attempt:
        """Start the reserved route, failing over until one produces a token. When every route
        refused only with "busy", wait for the next slot first in line and walk again."""
        while True:
            try:
                return await self._walk(self.reserved, None)
            except AllUpstreamsFailed as exc:
                if not only_busy(exc):
                    raise
                # Every route said "busy" although it had a free slot by our count: its limit
                # was probing above its real capacity. Wait for the next slot, first in line
                # (this request already had its turn), within the patience; with no patience
                # left the honest answer is the queue's 429, not a 503.
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise QueueTimeout(self.deadline - self.started_at, 1) from None
                self._enqueue(left, front=True)
                await self.granted()

    async def next_attempt(self, body_for: BodyFor) -> Attempt:
        """After the answering attempt failed mid-answer: the next route's attempt, sent the
        body ``body_for`` makes for it, read up to its first token."""
        return await self._walk(await self._next_route(), body_for)

    async def continuation(self, route: Route) -> Method:
        """How ``route``'s upstream continues a cut answer (``auto``: probed on first need)."""
        if is_text_completion(self.body):
            return TEXT_CONTINUATION
        upstream = self.router.upstreams.get(route.upstream)
        if upstream is None:  # removed by a reload meanwhile: `_walk` skips it
            return Method("none")
        model = route.model or upstream.default_model
        return await self.router.continuations.method(upstream, upstream.settings, model)

    def tried(self) -> list[str]:
        """Upstreams attempted so far, in order, ending with the one answering now."""
        failed = [f.upstream for f in self.failures if f.attempted]
        final = self.attempt.route if self.attempt is not None else self.reserved
        assert final is not None
        return [*self.cancelled, *failed, final.upstream]

    async def _walk(self, route: Route | None, body_for: BodyFor | None) -> Attempt:
        """Start ``route``, then the next ones, until an attempt speaks (the first one hedged
        when the alias says so); AllUpstreamsFailed when the routes, attempts or budget run
        out, and a request the upstream rejects is raised at once."""
        while route is not None:
            if route.upstream not in self.router.upstreams:
                # A reload removed it after its slot was taken: the slot goes back unused.
                if route.upstream in self.router.capacity.limits:
                    self.router.capacity.release(route.upstream, "ignore", 0.0, self.who)
                route = await self._next_route()
                continue
            body = self.body if body_for is None else await body_for(route)
            attempt = self._start(route, body)
            try:
                if self.spec.hedge is not None and self.attempts == 1 and self.rest:
                    winner = await self._hedged(attempt)
                    if winner is None:  # both racers failed, and both are in failures
                        route = await self._next_route()
                        continue
                    attempt = winner
                else:
                    await attempt.first_token()
            except UpstreamError as exc:
                await attempt.fail(exc)
                if not exc.retryable:
                    raise
                self.failures.append(exc)
                failed = attempt.route
                route = await self._next_route()
                log.warning(
                    "request %s: %s failed before its first token: %s; %s",
                    self.request_id, failed, exc.message,
                    f"failing over to {route}" if route is not None else "no route left",
                )  # fmt: skip
                continue
            except BaseException:
                await attempt.cancel()
                raise
            self.attempt = attempt
            return attempt
        raise AllUpstreamsFailed(self.alias, self.failures)

    def _start(self, route: Route, body: dict[str, Any]) -> Attempt:
        """Begin an attempt at ``route``, whose slot is taken (nothing is sent until the
        attempt is read)."""
        self.attempts += 1
        call = UpstreamCall(model=route.model, body=body, request_id=self.request_id)
        return Attempt(self.router, route, call, self.who, self.estimate)

    async def _next_route(self) -> Route | None:
        """The next usable route with a slot, if the attempt limit and the retry budget allow
        another; each route passed over is noted in ``failures``."""
        router, failures = self.router, self.failures
        if self.attempts >= router.settings.max_attempts:
            return None
        last = failures[-1] if failures else None
        if last is not None and not isinstance(last, UpstreamEjected):
            budget = router.retry_budgets.get(last.upstream)
            if budget is not None and not budget.try_spend():
                failures.append(
                    RetryBudgetSpent("retry budget spent: not failing over", upstream=last.upstream)
                )
                return None
        while self.rest:
            route = self.rest.popleft()
            stats = router.stats.get(route.upstream)
            if stats is None or route.upstream in router.disabled:
                # Planned before a reload removed or disabled it: not tried, not an error.
                continue
            if not stats.circuit.available():
                failures.append(router.ejected(route))
            elif not await router.capacity.take(route.upstream, self.who, self.estimate):
                full = router.capacity.resting(route.upstream) > 0
                reason = "at its rpm/tpm limit" if full else "at its concurrency limit"
                failures.append(UpstreamOverloaded(reason, upstream=route.upstream))
            else:
                return route
        return None

    async def _hedged(self, first: Attempt) -> Attempt | None:
        """Race a second route against a first that is slow to speak.

        Returns the racer that spoke first (None when both failed); every racer that failed
        is in ``failures``, and the upstream cancelled because the other spoke first is in
        ``cancelled``. An error before the race is raised."""
        hedge = self.spec.hedge
        assert hedge is not None
        after = hedge.after
        if after == "p95":
            after = first.stats.ttft_quantile(0.95) or first.settings.first_token_timeout
        task = asyncio.ensure_future(first.first_token())
        try:
            done, _ = await asyncio.wait({task}, timeout=float(after))
        except BaseException:
            # The client left while the first route was silent: asyncio.wait does not cancel
            # the read, and the attempt cannot be closed while it is still reading.
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        budget = self.router.hedge_budgets[self.alias]
        if done or not budget.try_spend():
            budget.note()
            await task
            return first
        budget.note()
        route = await self._next_route()  # notes the routes it skips
        if route is None:
            await task
            return first
        second = self._start(route, self.body)
        self.router.metrics.hedges.labels(self.alias).inc()
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
        self.failures.extend(errors)  # each was an attempt, whichever spoke
        if winner is None:
            for exc in errors:
                if not exc.retryable:
                    raise exc  # the request itself is wrong: no other route will take it
            return None
        if not errors:
            self.cancelled = [(second if winner is first else first).route.upstream]
        return winner


def only_busy(exc: AllUpstreamsFailed) -> bool:
    """Whether every route attempted refused with a plain "busy" (no Retry-After): the
    request then waits for the next slot instead of failing."""
    # A failover the retry budget refused is no reason to fail the client: waiting for the
    # next slot goes through admission, which no upstream's limit lets amplify.
    tried = [f for f in exc.failures if f.attempted]
    return bool(tried) and all(
        isinstance(f, UpstreamOverloaded) and f.retry_after is None for f in tried
    )
