"""What one running app holds, and how it is opened and closed.

``running`` opens it step by step, putting each resource on an exit stack as soon as it is
open: a step that raises closes what the steps before it opened, and shutdown closes all of it
in the reverse order. Handlers reach the result as ``app.state`` (``app_state``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from nobusy.admission.limits import KeyLimits
from nobusy.admission.shared import SharedSlots
from nobusy.cache.memory import ResponseCache
from nobusy.crypto import load_suite
from nobusy.edge.auth import Authenticator
from nobusy.edge.drain import Drain
from nobusy.guard import Guard
from nobusy.knowledge.base import KnowledgeBase
from nobusy.metrics import Metrics
from nobusy.money.spend import Pricer
from nobusy.offload import Offload
from nobusy.reload import Reloader, SettingsSource
from nobusy.routing import Router, reports
from nobusy.routing.checks import Prober
from nobusy.settings import Settings
from nobusy.store.audit import AuditError, AuditLog
from nobusy.store.backends import (
    liveness,
    open_audit,
    open_holds,
    open_responses,
    open_usage,
)
from nobusy.store.health import Watched
from nobusy.store.interfaces import CacheStore, LimitCounters, MoneyHolder, ResponsesStore
from nobusy.store.keys import KeyStore
from nobusy.store.ledger import Ledger
from nobusy.store.limits import SharedKeyLimits
from nobusy.store.redis_cache import RedisCache
from nobusy.store.redis_client import replica_name
from nobusy.store.redis_leases import RedisLeases
from nobusy.store.redis_limits import RedisKeyLimits
from nobusy.store.redis_money_holds import RedisMoneyHolds
from nobusy.store.redis_signals import RedisSignals, Verdict
from nobusy.store.replicas import Fleet
from nobusy.store.response_cache import SqliteCache
from nobusy.store.sessions import SessionStore
from nobusy.store.usage import UsageRecord

__all__ = ["AppState", "app_state", "running"]


@dataclass(slots=True)
class AppState:
    settings: Settings
    router: Router
    metrics: Metrics
    ledger: Ledger
    auth: Authenticator  # API and admin keys, and the failed-key allowance they share
    guard: Guard | None = None
    audit: AuditLog | None = None
    keys: KeyStore | None = None
    limits: LimitCounters | None = None
    offload: Offload = field(default_factory=Offload)
    drain: Drain = field(default_factory=Drain)  # the running requests; refusing when stopping
    fleet: Fleet | None = None  # the replicas serving together, this one included
    backends: list[Watched] = field(default_factory=list)  # the shared backends opened
    responses: ResponsesStore | None = None  # the Responses API's kept responses
    cache: ResponseCache | None = None  # the response cache, when an alias enables it
    knowledge: KnowledgeBase | None = None  # files, vector stores, their index and ingestion
    sessions: SessionStore | None = None  # the console's sign-in sessions
    holds: MoneyHolder | None = None  # money held against budgets by requests in flight
    pricer: Pricer | None = None  # what tokens cost (the worst case a hold reserves)
    reloader: Reloader | None = None  # applies a changed config (SIGHUP, /v1/nobusy/reload)


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.nobusy
    return state


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    router: Router,
    metrics: Metrics,
    auth: Authenticator,
    guard: Guard | None,
    source: SettingsSource | None = None,
) -> AsyncIterator[AppState]:
    """Open the logs, stores and pools, start the upstreams and background tasks; on the way
    out (or when a step raises) close every one of them opened so far, last opened first."""
    keys = auth.keys
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(keys.close)  # opened by create_app: the middleware's Authenticator needs it
        usage_log = open_usage(settings, keys)
        stack.callback(usage_log.close)
        audit = _open_audit(settings, keys)
        if audit is not None:
            stack.callback(audit.close)
        pricer = Pricer(settings)
        ledger = Ledger(usage_log, metrics, audit, keys, _pricing(pricer, router))
        stack.callback(ledger.flush_charges)
        holds = _open_holds(settings, stack)
        # The shared backends opened below, for /readyz, the status board and /metrics.
        fleet, backends = Fleet(replica_name(settings)), list[Watched]()
        limits = await _open_limits(settings, metrics, stack, fleet, backends)
        postgres = liveness(keys)
        if postgres is not None:  # `store`: PostgreSQL's keys copied, refreshed by a task
            backends.append(postgres)
            watching = asyncio.create_task(keys.watch(), name="nobusy-keys")
            stack.push_async_callback(_cancel, watching)
        offload = Offload()
        stack.callback(offload.close)
        responses = open_responses(settings)
        stack.callback(responses.close)
        cache = _open_cache(settings)
        if cache is not None:
            stack.push_async_callback(cache.aclose)
            metrics.watch_cache(cache)
        knowledge = KnowledgeBase(settings)
        stack.callback(knowledge.close)
        knowledge.start()  # files left in progress by a crash or a restart are taken up again
        sessions = SessionStore(settings.data_dir)  # the console's sign-ins
        stack.callback(sessions.close)
        auth.sessions = sessions  # the admin's cookie passes where the admin key does
        # Before any start: an upstream holds its pools from construction, and one whose start
        # failed halfway may hold a session or a model already.
        stack.push_async_callback(router.aclose)
        for upstream in router.upstreams.values():
            await upstream.start()
        if settings.state is not None:
            await _share_upstreams(settings, router, metrics, stack)
        shared = _shared_slots(settings) if settings.state is None else None
        if shared is not None:
            stack.callback(shared.close)
            router.capacity.share(shared)
            pump = asyncio.create_task(router.capacity.pump(), name="nobusy-pump")
            stack.push_async_callback(_cancel, pump)
        prober = Prober(router)
        stack.push_async_callback(prober.stop)
        prober.start()
        reloader = Reloader(source, router, prober)
        stack.push_async_callback(reloader.aclose)
        if audit is not None:
            pruning = asyncio.create_task(_prune_audit(audit), name="nobusy-audit-pruning")
            stack.push_async_callback(_cancel, pruning)
        drain = Drain(settings.drain_timeout, metrics.draining)
        queue = router.capacity.queue
        fleet.figures = lambda: (drain.running, sum(queue.depth().values()), drain.draining)
        metrics.watch_fleet(fleet.replicas, lambda: [b.health() for b in backends])
        state = AppState(
            settings, router, metrics, ledger, auth, guard, audit, keys, limits, offload, drain,
            fleet, backends, responses=responses, cache=cache, knowledge=knowledge,
            sessions=sessions, holds=holds, pricer=pricer, reloader=reloader,
        )  # fmt: skip
        reloader.on_applied = functools.partial(_applied, state)
        yield state


def _applied(state: AppState, settings: Settings) -> None:
    """A reload's settings reach the app's other holders: handlers and the prices."""
    state.settings = settings
    # One pricer for the rows and the holds: a reload's new routes and prices reach both.
    pricer = Pricer(settings)
    state.pricer = pricer
    state.ledger.price = _pricing(pricer, state.router)


def _open_holds(settings: Settings, stack: contextlib.AsyncExitStack) -> MoneyHolder | None:
    """Where requests hold money against budgets: the key database, decided in Redis when
    ``state`` names one; None with ``pricing.holds: false``. Closed after the ledger's last
    charges (the stack's callbacks run backwards)."""
    if not settings.pricing.holds:
        return None
    holds = open_holds(settings)
    stack.callback(holds.close)
    if settings.state is None:
        return holds
    shared = RedisMoneyHolds(settings.state.get_secret_value(), holds, settings.on_state_failure)
    stack.push_async_callback(shared.aclose)
    return shared


async def _open_limits(
    settings: Settings,
    metrics: Metrics,
    stack: contextlib.AsyncExitStack,
    fleet: Fleet,
    backends: list[Watched],
) -> LimitCounters:
    """Per-key limits: in Redis when ``state`` names one (every replica shares them), else in
    memory for one worker, else in SQLite for the workers of this host."""
    replica = fleet.replica
    if settings.state is None:
        metrics.watch_replica(replica)
        limits: LimitCounters = (
            SharedKeyLimits(settings.data_dir) if settings.workers > 1 else KeyLimits()
        )
        stack.callback(limits.close)
        return limits
    shared = RedisKeyLimits(
        settings.state.get_secret_value(),
        replica,
        settings.on_state_failure,
        settings.replicas_hint,
        fleet,
    )
    backends.append(shared)
    stack.push_async_callback(shared.aclose)
    await shared.start()
    metrics.watch_replica(replica, lambda: (shared.shared, shared.replicas))
    return shared


async def _share_upstreams(
    settings: Settings, router: Router, metrics: Metrics, stack: contextlib.AsyncExitStack
) -> None:
    """With ``state``: every upstream's slots are leases in Redis under the fleet's learned
    limit, circuits are told to every replica, keys' demand and retry budgets are reported;
    this replica's queue is served by the pump as leases free up anywhere."""
    assert settings.state is not None
    url, capacity = settings.state.get_secret_value(), router.capacity
    ceilings = {name: int(limit.ceiling) for name, limit in capacity.limits.items()}
    initial = dict.fromkeys(ceilings, settings.initial_concurrency)
    replica = replica_name(settings)
    leases = RedisLeases(
        url,
        replica,
        ceilings,
        initial,
        settings.lease_ttl,
        settings.replicas_hint,
        {name: (spec.rpm, spec.tpm) for name, spec in settings.upstreams.items()},
    )
    leases.report = lambda: reports.report(router)
    leases.learn = lambda others: reports.learn(router, others)
    stack.push_async_callback(leases.aclose)  # after the pump and the signals: slots go back
    await leases.start()
    capacity.lease(leases)
    metrics.watch_leases(lambda: leases.shared)

    def follow(verdict: Verdict) -> None:
        upstream, event, seconds, reason, ejections = verdict
        stats = router.stats.get(upstream)
        if stats is not None:
            stats.circuit.follow(event, seconds, reason, ejections)

    signals = RedisSignals(url, leases.member, follow)
    stack.push_async_callback(signals.aclose)
    router.teller = lambda name: functools.partial(_tell, signals, name)
    for name, stats in router.stats.items():
        stats.circuit.told = router.teller(name)
    await signals.start()
    pump = asyncio.create_task(capacity.pump(), name="nobusy-pump")
    stack.push_async_callback(_cancel, pump)


def _tell(
    signals: RedisSignals, upstream: str, event: str, seconds: float, reason: str, ejections: int
) -> None:
    signals.tell((upstream, event, seconds, reason, ejections))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _open_cache(settings: Settings) -> ResponseCache | None:
    """The response cache, when an alias enables it: in memory, in front of Redis (``state``:
    every replica shares it) or of ``data_dir/cache.db`` (the processes of this host)."""
    if not any(alias.cache.enabled for alias in settings.models.values()):
        return None
    store: CacheStore = (
        RedisCache(settings.state.get_secret_value())
        if settings.state is not None
        else SqliteCache(settings.data_dir)
    )
    return ResponseCache(settings.cache_entries, store, max_bytes=settings.cache_memory_mb << 20)


def _open_audit(settings: Settings, keys: KeyStore) -> AuditLog | None:
    if not settings.audit.enabled:
        return None
    suite = load_suite(settings.crypto, settings.data_dir, os.environ)
    return open_audit(settings, suite, keys, serving=True)


async def _prune_audit(audit: AuditLog) -> None:
    """Retention: rows older than ``retention_days`` go at start and every six hours."""
    log = logging.getLogger("nobusy.audit")
    while True:
        try:
            removed = await asyncio.to_thread(audit.prune)
        except AuditError as exc:  # a broken chain is kept as evidence, never pruned away
            log.error("audit retention skipped: %s", exc)
        else:
            if removed:
                log.info("pruned %d audit rows past retention", removed)
        await asyncio.sleep(6 * 3600)


def _shared_slots(settings: Settings) -> SharedSlots | None:
    """With several workers, count upstream ceilings together across the processes."""
    ceilings = {
        name: spec.max_concurrency
        for name, spec in settings.upstreams.items()
        if spec.max_concurrency is not None
    }
    if settings.workers <= 1 or not ceilings:
        return None
    return SharedSlots(settings.data_dir, ceilings)


def _pricing(pricer: Pricer, router: Router) -> Callable[[UsageRecord], None]:
    """Price a usage record, then count it in its route's tier (``routing.spill``)."""

    def price(record: UsageRecord) -> None:
        pricer.price(record)
        router.served(record.alias, record.upstream, record.report_cost_micros or 0)

    return price
