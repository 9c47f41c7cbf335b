"""The routes of each model alias, and what choosing among them needs: one ``Router`` per app.

The router holds what every request shares: the upstreams, their live statistics
(``routing.stats``) and circuits, the slots and queue of ``admission.capacity``, the retry and
hedge budgets, and how each upstream continues a cut answer. It plans an alias's routes
(``routing.balancing``: tiers, then power of two choices over load and time to first token,
skipping upstreams whose circuit is open), and with ``spill_after`` which tier a request may
take (``routing.spill``, reading the tiers' slots, queues and the servers' own queues). Walking
the plan for one request is ``routing.walker``'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nobusy.admission.capacity import Capacity, Ticket
from nobusy.errors import ModelNotFound, UpstreamEjected
from nobusy.metrics import Metrics
from nobusy.routing.balancing import plan_routes
from nobusy.routing.budget import Budget
from nobusy.routing.circuit import Circuit
from nobusy.routing.continuation_probe import ContinuationModes
from nobusy.routing.placement import Placement, ServerView
from nobusy.routing.spill import TierBook, TierLoad, choose_tier
from nobusy.routing.stats import UpstreamStats
from nobusy.settings import ModelAlias, Route, Settings
from nobusy.upstreams.base import Upstream
from nobusy.upstreams.server_metrics import ServerSignals

__all__ = ["Retired", "Router"]


class Router:
    """Holds the upstreams, their statistics, slots and budgets, and the alias table."""

    def __init__(
        self,
        settings: Settings,
        upstreams: Mapping[str, Upstream],
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.models: dict[str, ModelAlias] = _table(settings)
        # UPSTREAM/MODEL routes asked for by name (cross-checks), kept off the model list.
        self.direct: dict[str, ModelAlias] = {}
        self.upstreams = dict(upstreams)
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.stats = {
            name: UpstreamStats(name, spec.kind, Circuit(spec.circuit, name=name))
            for name, spec in settings.upstreams.items()
        }
        self.retry_budgets = {name: self._budget() for name in self.upstreams}
        self.continuations = ContinuationModes()  # how each upstream continues a cut answer
        # With several worker processes the ceilings are counted together across them (the
        # app shares them at start-up: admission/shared.py); each still adapts its own limit.
        self.capacity = Capacity(
            {name: spec.max_concurrency for name, spec in settings.upstreams.items()},
            max(1, settings.initial_concurrency // settings.workers),
            rates={
                name: (_part(spec.rpm, settings.workers), _part(spec.tpm, settings.workers))
                for name, spec in settings.upstreams.items()
            },
        )
        self.capacity.pause = self._pause
        for name, limit in self.capacity.limits.items():
            limit.name = limit.name or name  # for its log lines
        self.placement = self._placement()  # None without server-aware upstreams
        self.drained: set[str] = set()  # upstreams sent no new request (`nobusy pool drain`)
        self.tiers = TierBook()  # service rates and each tier's answers (routing.spill)
        # With `state`: what tells the other replicas of an upstream's circuit verdicts, for
        # the circuits of upstreams a reload adds (nobusy.state).
        self.teller: Callable[[str], Callable[[str, float, str, int], None]] | None = None
        # Upstreams the config disables (`enabled: false`): kept, but sent no new request.
        self.disabled = {name for name, spec in settings.upstreams.items() if not spec.enabled}
        self.hedge_budgets = {
            alias: Budget(spec.hedge.budget, 1, settings.retry_window)
            for alias, spec in self.models.items()
            if spec.hedge is not None
        }

    def _placement(self) -> Placement | None:
        views = {
            name: self._view(name, signals)
            for name, upstream in self.upstreams.items()
            if isinstance(signals := getattr(upstream, "signals", None), ServerSignals)
        }
        return Placement(views) if views else None

    def _view(self, name: str, signals: ServerSignals) -> ServerView:
        stats, limit = self.stats[name], self.capacity.limits[name]
        if signals.slots:
            # A server that says how many it runs at once (`slots`) is not pushed below that
            # by first tokens slowing: its queue is what tiers and placement read and spill.
            limit.floor = min(float(signals.slots), limit.ceiling)
        return ServerView(signals, lambda: stats.in_flight, lambda: limit.current)

    def _budget(self) -> Budget:
        s = self.settings
        return Budget(s.retry_budget, s.retry_budget_min, s.retry_window)

    def aliases(self) -> list[str]:
        return list(self.models)

    def alias(self, name: str) -> ModelAlias:
        spec = self.models.get(name) or self.direct.get(name)
        if spec is None:
            available = ", ".join(self.models) or "(none)"
            raise ModelNotFound(
                f"The model '{name}' does not exist. Available models: {available}.",
                param="model",
            )
        return spec

    def direct_route(self, name: str) -> bool:
        """Make ``UPSTREAM/MODEL`` (a configured upstream) usable as a one-route alias for the
        features that accept routes (``nobusy.crosscheck``); whether it is one."""
        upstream, slash, model = name.partition("/")
        if name in self.models or not slash or not model or upstream not in self.upstreams:
            return name in self.models or name in self.direct
        self.direct.setdefault(name, ModelAlias(routes=(Route(upstream, model),)))
        return True

    def usable(self, upstream: str) -> bool:
        return self.stats[upstream].circuit.available()

    def _pause(self, upstream: str) -> float:
        """Seconds until ``upstream`` may be sent a request (a moment while a probe is out)."""
        stats = self.stats.get(upstream)
        if stats is None or upstream in self.disabled:
            # Removed by a reload (its last attempts are ending) or disabled: a slot it frees
            # goes to no waiter.
            return float("inf")
        circuit = stats.circuit
        return 0.0 if circuit.available() else max(circuit.retry_in(), 0.05)

    def plan(
        self, routes: Sequence[Route], body: Mapping[str, Any] | None = None
    ) -> tuple[list[Route], list[Route]]:
        """(usable routes in the order to try them, routes skipped because their circuit is
        open), by ``routing.balancing``; server-aware routes by ``routing.placement`` when the
        request's ``body`` is given. Drained upstreams are left out."""
        if self.drained or self.disabled or any(r.upstream not in self.stats for r in routes):
            # Also a route planned before a reload removed its upstream.
            off = self.drained | self.disabled
            routes = [r for r in routes if r.upstream not in off and r.upstream in self.stats]
        ordered, skipped = plan_routes(routes, self.stats, self.rng)
        if body is not None and self.placement is not None:
            ordered = self.placement.order(ordered, body)
        return ordered, skipped

    def placed(self, route: Route, body: Mapping[str, Any]) -> None:
        """A request takes ``route``: placement remembers its prefix there."""
        if self.placement is not None:
            self.placement.placed_on(route.upstream, body)

    def enqueue(
        self,
        alias: str,
        key: str,
        priority: str,
        patience: float,
        front: bool = False,
        tokens: int = 0,
        spec: ModelAlias | None = None,
        only: frozenset[str] | None = None,
    ) -> Ticket:
        """Wait for a slot on any route of the alias (QueueFull if it would take long); one
        whose circuit is open hands out no slot until it may be used again. ``spec``: the
        alias's routes that can take the request, when not all can; ``only``: the upstreams
        its tier allows (``spill``)."""
        spec = spec or self.alias(alias)
        off = self.drained | self.disabled
        upstreams = frozenset(
            r.upstream
            for r in (*spec.routes, *spec.overflow)
            if r.upstream not in off
            and r.upstream in self.stats
            and (only is None or r.upstream in only)
        )
        return self.capacity.enqueue(upstreams, key, priority, patience, front, tokens)

    # --- tiers ----------------------------------------------------------------------------------

    def spill(
        self, ordered: Sequence[Route], overflow: Sequence[Route], after: float
    ) -> list[Route]:
        """The routes a request may take a slot on now, the chosen tier's first, then the
        cheaper tiers' (``routing.spill``): ``ordered`` are the usable main routes in tier
        order, ``overflow`` a last tier of their own."""
        groups: list[list[Route]] = []
        for route in ordered:
            if groups and groups[-1][0].tier == route.tier:
                groups[-1].append(route)
            else:
                groups.append([route])
        if overflow:
            groups.append(list(overflow))
        if len(groups) < 2:
            return [r for group in groups for r in group]
        chosen = choose_tier([self.tier_load(g) for g in groups], after)
        return [*groups[chosen], *(r for group in groups[:chosen] for r in group)]

    def tier_load(self, routes: Sequence[Route]) -> TierLoad:
        """A tier's free room, the requests waiting for it (nobusy's queue and the servers'
        own) and the rate it finishes them."""
        now = time.monotonic()
        names = frozenset(r.upstream for r in routes)
        servers = self.placement.servers if self.placement is not None else {}
        capacity = self.capacity
        room, ahead = False, 0.0
        slots: dict[str, float] = {}
        for name in names:
            limit = capacity.limits[name]
            view = servers.get(name)
            load = view.signals.load(now) if view is not None else None
            if view is not None and load is not None:
                count = min(view.signals.slots or limit.current, limit.current)
                room = room or (load < count and limit.has_room())
                ahead += max(0.0, load - count)  # the server's own waiting queue
            else:
                count = limit.current
                room = room or limit.has_room()
            slots[name] = count
        ahead += capacity.queue.waiting_for(names)
        return TierLoad(room, ahead, self.tiers.rate(slots, capacity.service))

    def served(self, alias: str, label: str | None, cost_micros: int) -> None:
        """An answer from the route ``label`` (a usage row's ``upstream``) for ``alias``,
        costing ``cost_micros`` in the reporting currency: counted in its tier."""
        spec = self.models.get(alias) or self.direct.get(alias)
        if label is None or spec is None:
            return
        upstream = label.removesuffix(" (overflow)").partition("/")[0]
        if upstream not in self.upstreams or not spec.routes:
            return
        cheapest = min(r.tier for r in spec.routes)
        if label.endswith(" (overflow)"):  # a tier past the last main one
            base = max(r.tier for r in spec.routes) + 1
            tiers = [base + r.tier for r in spec.overflow if r.upstream == upstream]
        else:
            tiers = [r.tier for r in spec.routes if r.upstream == upstream]
        if tiers:
            self.tiers.served(min(tiers), cheapest, cost_micros, upstream)

    def ejected(self, route: Route) -> UpstreamEjected:
        """The failure that names a route skipped because its circuit is open."""
        circuit = self.stats[route.upstream].circuit
        wait = circuit.retry_in()
        reason = f" after: {circuit.reason}" if circuit.reason else ""
        return UpstreamEjected(
            f"circuit open for {wait:.0f}s more{reason}",
            upstream=route.upstream,
            retry_after=wait,
        )

    def retable(self, settings: Settings, built: Mapping[str, Upstream]) -> list[Retired]:
        """Swap in the routing table of ``settings`` at once (nothing awaits in here, so no
        request sees half of it). ``built``: the upstreams added or whose definition changed,
        already started; the others keep their object and state (circuit, adaptive limit,
        metrics poller, streams). Returns the upstreams replaced or removed, with the
        statistics their running attempts still count in, to close once those are done."""
        retired: list[Retired] = []
        upstreams, stats = dict(self.upstreams), dict(self.stats)
        for name in set(upstreams) - set(settings.upstreams):
            retired.append((upstreams.pop(name), stats.pop(name)))
            self.drained.discard(name)
        workers = settings.workers
        for name, upstream in built.items():
            spec = settings.upstreams[name]
            if name in upstreams:
                retired.append((upstreams[name], stats[name]))
            upstreams[name] = upstream
            stats[name] = UpstreamStats(name, spec.kind, Circuit(spec.circuit, name=name))
            if self.teller is not None:
                stats[name].circuit.told = self.teller(name)
            self.retry_budgets.setdefault(name, self._budget())
            self.continuations.forget(name)
            ceiling = spec.max_concurrency
            self.capacity.adopt(
                name,
                None if ceiling is None else max(1, ceiling // workers),
                (_part(spec.rpm, workers), _part(spec.tpm, workers)),
                max(1, settings.initial_concurrency // workers),
            )
        self.upstreams, self.stats = upstreams, stats
        self.settings = settings
        self.models = _table(settings)
        self.disabled = {name for name, spec in settings.upstreams.items() if not spec.enabled}
        self.direct = {n: a for n, a in self.direct.items() if a.routes[0].upstream in stats}
        self.hedge_budgets = {
            alias: self.hedge_budgets.get(alias)
            or Budget(spec.hedge.budget, 1, settings.retry_window)
            for alias, spec in self.models.items()
            if spec.hedge is not None
        }
        self.placement = self._replace_placement(self.placement)
        return retired

    def _replace_placement(self, old: Placement | None) -> Placement | None:
        """The placement of the new table; servers kept keep their prefix index and counts."""
        new = self._placement()
        if new is not None and old is not None:
            for name in set(new.servers) & set(old.servers):
                if new.servers[name].signals is old.servers[name].signals:
                    new.indexes[name] = old.indexes[name]
                    new.placed[name] = old.placed[name]
                    new.hit_blocks[name] = old.hit_blocks[name]
                    new.total_blocks[name] = old.total_blocks[name]
        return new

    def forget(self, name: str) -> None:
        """An upstream removed by a reload has finished its last attempt: drop its slots."""
        if name not in self.upstreams:
            self.capacity.forget(name)
            self.retry_budgets.pop(name, None)

    async def aclose(self) -> None:
        await asyncio.gather(*(u.aclose() for u in self.upstreams.values()))


# An upstream taken out of the table by a reload, and the statistics its attempts count in.
Retired = tuple[Upstream, UpstreamStats]


def _enabled(models: Mapping[str, ModelAlias]) -> dict[str, ModelAlias]:
    return {alias: spec for alias, spec in models.items() if spec.enabled}


def _table(settings: Settings) -> dict[str, ModelAlias]:
    """The enabled aliases, each route in its upstream's ``tier`` where one is set."""
    return {alias: _retiered(spec, settings) for alias, spec in _enabled(settings.models).items()}


def _retiered(spec: ModelAlias, settings: Settings) -> ModelAlias:
    """``spec`` with each route in its upstream's ``tier`` where one is set."""

    def tiered(routes: tuple[Route, ...]) -> tuple[Route, ...]:
        out = []
        for route in routes:
            upstream = settings.upstreams.get(route.upstream)
            tier = upstream.tier if upstream is not None else None
            out.append(route if tier is None else dataclasses.replace(route, tier=tier))
        return tuple(out)

    routes, overflow = tiered(spec.routes), tiered(spec.overflow)
    if routes == spec.routes and overflow == spec.overflow:
        return spec
    return spec.model_copy(update={"routes": routes, "overflow": overflow})


def _part(value: int | None, workers: int) -> int | None:
    """One worker's part of an upstream's rpm or tpm (without ``state``, windows are per
    process: divided, the workers together never pass the ceiling)."""
    return None if value is None else max(1, value // workers)
