"""Prometheus metrics for one app: requests, latency, time to first token, tokens, errors.

Each app owns its registry, so two apps in one process (tests, workers) never share counters.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nobusy.knowledge.stats import KnowledgeStats, Timings

if TYPE_CHECKING:
    from nobusy.admission.capacity import Capacity
    from nobusy.cache.memory import ResponseCache
    from nobusy.knowledge.base import KnowledgeBase
    from nobusy.routing.stats import UpstreamStats
    from nobusy.store.health import Health
    from nobusy.store.replicas import Replica

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
        self.hedges = Counter(
            "nobusy_hedges",
            "Hedged requests started, by alias.",
            ["alias"],
            registry=r,
        )
        self.upstream_up = Gauge(
            "nobusy_upstream_up",
            "1 when the upstream's last attempt succeeded, 0 when it failed.",
            ["upstream"],
            registry=r,
        )
        self.draining = Gauge(
            "nobusy_draining",
            "1 while this process drains before it stops (SIGTERM): new requests refused.",
            registry=r,
        )

    def watch_upstreams(
        self,
        source: Callable[[], Iterable[UpstreamStats]],
        capacity: Callable[[], Capacity] | None = None,
    ) -> None:
        """Report each upstream's circuit and load when scraped (nothing on the hot path)."""
        self.registry.register(_UpstreamCollector(source, capacity))

    def watch_replica(
        self, replica: str, state: Callable[[], tuple[bool, int]] | None = None
    ) -> None:
        """Name this replica; with ``state`` set, say whether key limits are shared now and
        how many replicas share them."""
        self.registry.register(_ReplicaCollector(replica, state))

    def watch_leases(self, shared: Callable[[], bool]) -> None:
        """With state: say whether upstream slots are leases in Redis now (1) or counted in
        this replica because Redis does not answer (0)."""
        gauge = Gauge(
            "nobusy_upstream_leases_shared",
            "1 while upstream slots are leases shared through Redis (state), 0 while each "
            "replica counts its share locally because Redis does not answer.",
            registry=self.registry,
        )
        gauge.set_function(lambda: 1.0 if shared() else 0.0)

    def watch_cache(self, cache: ResponseCache) -> None:
        """The response cache's hits, misses, stale answers and entries, when scraped."""
        self.registry.register(_CacheCollector(cache))

    def watch_fleet(
        self, replicas: Callable[[], Iterable[Replica]], backends: Callable[[], Iterable[Health]]
    ) -> None:
        """Report every replica's load as its heartbeat last showed it, and whether each shared
        backend answers, when scraped (read from memory: a scrape never waits on Redis)."""
        self.registry.register(_FleetCollector(replicas, backends))

    def watch_knowledge(self, source: Callable[[], KnowledgeBase | None]) -> None:
        """The knowledge base's ingestion, searches and workers, when scraped (from memory);
        ``source`` gives None before the app has opened it, and the counters read zero."""
        self.registry.register(_KnowledgeCollector(source))

    def watch_pool(self, rows: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        """Report each local inference server's signals (``routing.pool``) when scraped."""
        self.registry.register(_PoolCollector(rows))

    def watch_tiers(self, rows: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        """Report each tier's utilisation, answers, spilled share and spill cost
        (``routing.pool.tier_rows``) when scraped."""
        self.registry.register(_TierCollector(rows))

    def attempt(self, upstream: str, outcome: str) -> None:
        attempts, up = self._attempt_children(upstream, outcome)
        attempts.inc()
        up.set(1 if outcome == "ok" else 0)

    def answered(
        self,
        alias: str,
        upstream: str,
        outcome: str,
        seconds: float,
        ttft: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """Count one finished request (its row in the usage log is written beside this)."""
        requests, latency, ttft_seconds, prompt, completion = self._answer_children(
            alias, upstream, outcome
        )
        if ttft is not None:
            ttft_seconds.observe(ttft)
        requests.inc()
        latency.observe(seconds)
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if completion_tokens:
            completion.inc(completion_tokens)
        if outcome not in ("ok", "client_gone"):
            self.errors.labels(alias, outcome).inc()

    # prometheus_client's labels() checks, converts and locks on every call, eight times per
    # request; the children of a label set never change, so they are looked up once. Label
    # values are bounded by the configuration (aliases, upstreams) and the outcome codes.
    @functools.cache  # noqa: B019  # one Metrics per app, alive as long as the app
    def _answer_children(
        self, alias: str, upstream: str, outcome: str
    ) -> tuple[Counter, Histogram, Histogram, Counter, Counter]:
        return (
            self.requests.labels(alias, upstream, outcome),
            self.latency.labels(alias, upstream),
            self.ttft.labels(alias, upstream),
            self.tokens.labels(alias, upstream, "prompt"),
            self.tokens.labels(alias, upstream, "completion"),
        )

    @functools.cache  # noqa: B019
    def in_flight_of(self, alias: str) -> Gauge:
        return self.in_flight.labels(alias)

    @functools.cache  # noqa: B019
    def _attempt_children(self, upstream: str, outcome: str) -> tuple[Counter, Gauge]:
        return self.attempts.labels(upstream, outcome), self.upstream_up.labels(upstream)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_STATES = ("closed", "open", "half_open")


class _UpstreamCollector(Collector):
    def __init__(
        self,
        source: Callable[[], Iterable[UpstreamStats]],
        capacity: Callable[[], Capacity] | None,
    ) -> None:
        self.source = source
        self.capacity = capacity

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "nobusy_upstream_circuit_state",
            "1 for the circuit state each upstream is in (closed, open, half_open).",
            labels=["upstream", "state"],
        )
        in_flight = GaugeMetricFamily(
            "nobusy_upstream_in_flight", "Attempts in flight to each upstream.", labels=["upstream"]
        )
        ejections = GaugeMetricFamily(
            "nobusy_upstream_ejections", "Times each upstream was ejected.", labels=["upstream"]
        )
        ttft = GaugeMetricFamily(
            "nobusy_upstream_ttft_ewma_seconds",
            "Smoothed time to first token of each upstream.",
            labels=["upstream"],
        )
        for upstream in self.source():
            current = upstream.circuit.state.value
            for name in _STATES:
                state.add_metric([upstream.name, name], 1.0 if name == current else 0.0)
            in_flight.add_metric([upstream.name], upstream.in_flight)
            ejections.add_metric([upstream.name], upstream.circuit.ejections)
            if upstream.ttft_ewma is not None:
                ttft.add_metric([upstream.name], upstream.ttft_ewma)
        yield from (state, in_flight, ejections, ttft)
        if self.capacity is None:
            return
        capacity = self.capacity()
        limit = GaugeMetricFamily(
            "nobusy_upstream_concurrency_limit",
            "Each upstream's adaptive concurrency limit now.",
            labels=["upstream"],
        )
        leases = GaugeMetricFamily(
            "nobusy_upstream_leases_held",
            "With state: slots on each upstream held by every replica together (as this "
            "replica last saw them).",
            labels=["upstream"],
        )
        window = {
            part: GaugeMetricFamily(
                f"nobusy_upstream_window_{part}",
                f"The {part} in the last minute's window of each upstream with rpm or tpm "
                "(with state: every replica's, as this replica last saw them).",
                labels=["upstream"],
            )
            for part in ("requests", "tokens")
        }
        for name, figures in capacity.snapshot().items():
            limit.add_metric([name], figures["limit"])
            if "leases_held" in figures:
                leases.add_metric([name], figures["leases_held"])
            for part, family in window.items():
                if f"window_{part}" in figures:
                    family.add_metric([name], figures[f"window_{part}"])
        queued = GaugeMetricFamily(
            "nobusy_queue_depth", "Requests waiting for a slot, by priority.", labels=["priority"]
        )
        for priority, depth in capacity.queue.depth().items():
            queued.add_metric([priority], depth)
        yield from (limit, queued, leases, *window.values())


class _ReplicaCollector(Collector):
    def __init__(self, replica: str, state: Callable[[], tuple[bool, int]] | None) -> None:
        self.replica = replica
        self.state = state

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "nobusy_replica_info", "This replica's id (replica_id).", labels=["replica"]
        )
        info.add_metric([self.replica], 1.0)
        yield info
        if self.state is None:
            return
        shared, replicas = self.state()
        yield GaugeMetricFamily(
            "nobusy_state_shared",
            "1 while key limits are shared through Redis (state), 0 while they are local "
            "because it does not answer.",
            value=1.0 if shared else 0.0,
        )
        yield GaugeMetricFamily(
            "nobusy_state_replicas",
            "Replicas seen sharing the state at the last heartbeat.",
            value=replicas,
        )


class _FleetCollector(Collector):
    def __init__(
        self, replicas: Callable[[], Iterable[Replica]], backends: Callable[[], Iterable[Health]]
    ) -> None:
        self.replicas = replicas
        self.backends = backends

    def collect(self) -> Iterator[Metric]:
        def family(name: str, text: str, label: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=[label])

        in_flight = family(
            "nobusy_replica_in_flight", "Chat requests running on each replica.", "replica"
        )
        queue = family(
            "nobusy_replica_queue_depth", "Requests waiting for a slot on each replica.", "replica"
        )
        draining = family("nobusy_replica_draining", "1 while a replica drains.", "replica")
        seen = family(
            "nobusy_replica_last_seen_seconds",
            "Seconds since each replica's last heartbeat (0 for this one).",
            "replica",
        )
        now = time.time()
        for replica in self.replicas():
            in_flight.add_metric([replica.id], replica.in_flight)
            queue.add_metric([replica.id], replica.queue)
            draining.add_metric([replica.id], 1.0 if replica.draining else 0.0)
            seen.add_metric([replica.id], max(0.0, now - replica.seen))
        up = family(
            "nobusy_backend_up",
            "1 while a shared backend (redis, postgresql) answers as configured, 0 while it "
            "does not (serving on a local fallback, or refusing).",
            "backend",
        )
        for health in self.backends():
            up.add_metric([health.backend], 1.0 if health.ok else 0.0)
        yield from (in_flight, queue, draining, seen, up)


# The columns of ``routing.pool.pool_rows`` exported as nobusy_pool_<column>{upstream}.
_POOL_GAUGES = {
    "running": "Requests the server reports running (its metrics; absent when not believed).",
    "waiting": "Requests the server reports waiting in its queue.",
    "kv_usage": "The server's KV-cache use, 0 to 1.",
    "server_hit_rate": "The prefix-cache hit rate the server reports.",
    "cache_hit_estimate": "Share of prompt blocks placement expected the server to have cached.",
    "utilisation": "Running requests over the server's slots (or learned limit), 0 to 1.",
    "placed": "Requests placed on the server since start.",
    "drained": "1 while the server is drained: no new request goes to it.",
}


class _PoolCollector(Collector):
    def __init__(self, rows: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        families = {
            column: GaugeMetricFamily(f"nobusy_pool_{column}", text, labels=["upstream"])
            for column, text in _POOL_GAUGES.items()
        }
        fresh = GaugeMetricFamily(
            "nobusy_pool_metrics_believed",
            "1 while the server's own metrics are read and believed, 0 while placement falls "
            "back to the learned limit.",
            labels=["upstream"],
        )
        for row in self.rows():
            for column, family in families.items():
                value = row.get(column)
                if value is not None:
                    family.add_metric([row["name"]], float(value))
            fresh.add_metric([row["name"]], 1.0 if row.get("signals") == "metrics" else 0.0)
        yield from (*families.values(), fresh)


class _TierCollector(Collector):
    def __init__(self, rows: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        labels = ["tier"]
        utilisation = GaugeMetricFamily(
            "nobusy_tier_utilisation",
            "Busy slots over the tier's slots now (servers' own counts where believed), 0 to 1.",
            labels=labels,
        )
        share = GaugeMetricFamily(
            "nobusy_tier_share",
            "Share of all answers given by the tier since start.",
            labels=labels,
        )
        spilled_share = GaugeMetricFamily(
            "nobusy_tier_spilled_share",
            "Share of all answers spilled to the tier from a cheaper one since start.",
            labels=labels,
        )
        answered = CounterMetricFamily(
            "nobusy_tier_answered", "Answers given by the tier's upstreams.", labels=labels
        )
        spilled = CounterMetricFamily(
            "nobusy_tier_spilled",
            "Answers the tier gave for aliases whose cheaper tier was full (spilled).",
            labels=labels,
        )
        cost = CounterMetricFamily(
            "nobusy_tier_spill_cost",
            "What the spilled answers cost (usage × price), in the reporting currency.",
            labels=[*labels, "currency"],
        )
        for row in self.rows():
            tier = [str(row["tier"])]
            utilisation.add_metric(tier, float(row["utilisation"]))
            share.add_metric(tier, float(row["share"]))
            spilled_share.add_metric(tier, float(row["spilled_share"]))
            answered.add_metric(tier, float(row["answered"]))
            spilled.add_metric(tier, float(row["spilled"]))
            cost.add_metric([*tier, row["currency"]], float(row["spill_cost"]))
        yield from (utilisation, share, spilled_share, answered, spilled, cost)


class _CacheCollector(Collector):
    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        cache = self.cache
        lookups = CounterMetricFamily(
            "nobusy_cache_lookups",
            "Response-cache lookups: hit (answered from the cache), miss, stale (kept answer "
            "served because no upstream could answer).",
            labels=["result"],
        )
        for result, count in (("hit", cache.hits), ("miss", cache.misses), ("stale", cache.stale)):
            lookups.add_metric([result], count)
        yield lookups
        yield GaugeMetricFamily(
            "nobusy_cache_entries",
            "Response-cache entries in this process's memory.",
            value=len(cache),
        )


class _KnowledgeCollector(Collector):
    def __init__(self, source: Callable[[], KnowledgeBase | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        kb = self.source()
        now = (kb.stats if kb is not None else KnowledgeStats()).snapshot()
        files = CounterMetricFamily(
            "nobusy_knowledge_files_ingested",
            "Files whose ingestion into a vector store ended in this process, by outcome "
            "(completed; failed, with a last_error; cancelled: removed from the store meanwhile).",
            labels=["outcome"],
        )
        for outcome, count in now.files.items():
            files.add_metric([outcome], count)
        failed = CounterMetricFamily(
            "nobusy_knowledge_files_failed",
            "Files whose ingestion failed, by last_error code.",
            labels=["code"],
        )
        for code, count in now.failures.items():
            failed.add_metric([code], count)
        ingest = HistogramMetricFamily(
            "nobusy_knowledge_ingest_seconds",
            "Time one file's ingestion took, from a worker taking it to its end, by outcome.",
            labels=["outcome"],
        )
        for outcome, timings in now.ingest_seconds.items():
            ingest.add_metric([outcome], _buckets(timings), timings.total)
        stages = CounterMetricFamily(
            "nobusy_knowledge_ingest_stage_seconds",
            "Seconds spent in each stage of ingestion: parse (bytes read and turned into "
            "text), chunk, embed, index (indexing overlaps the next group's embedding).",
            labels=["stage"],
        )
        for stage, seconds in now.stage_seconds.items():
            stages.add_metric([stage], seconds)
        searches = CounterMetricFamily(
            "nobusy_knowledge_searches",
            "Vector stores searched, by source (api: the search endpoint; grounding: passages "
            "for an answer, one per store) and outcome (ok or error).",
            labels=["source", "outcome"],
        )
        for (source, outcome), count in now.searches.items():
            searches.add_metric([source, outcome], count)
        search = HistogramMetricFamily(
            "nobusy_knowledge_search_seconds",
            "Time one vector store's search took (query embedded, BM25 and vectors fused).",
            labels=["source"],
        )
        for source, timings in now.search_seconds.items():
            search.add_metric([source], _buckets(timings), timings.total)
        yield from (files, failed, ingest, stages, searches, search)
        yield CounterMetricFamily(
            "nobusy_knowledge_ingested_bytes",
            "Bytes of the files ingested completely (as uploaded).",
            value=now.bytes,
        )
        yield CounterMetricFamily(
            "nobusy_knowledge_ingested_chunks",
            "Chunks of the files ingested completely.",
            value=now.chunks,
        )
        yield CounterMetricFamily(
            "nobusy_knowledge_expired_files_deleted",
            "Files deleted by the sweeper after their expires_at.",
            value=now.swept,
        )
        if kb is None:
            return
        health = kb.health()
        for name, text, value in (
            ("files_waiting", "Files queued for this process's ingestion workers.", health.waiting),
            ("files_ingesting", "Files this process's workers are ingesting.", health.ingesting),
            ("workers_alive", "Ingestion worker threads alive.", health.workers_alive),
            ("workers_configured", "Ingestion worker threads started.", health.workers_configured),
            (
                "sweeper_alive",
                "1 while the thread that deletes expired files is alive.",
                1 if health.sweeper_alive else 0,
            ),
        ):
            yield GaugeMetricFamily(f"nobusy_knowledge_{name}", text, value=value)


def _buckets(timings: Timings) -> list[tuple[str, float]]:
    """Cumulative counts per upper bound, +Inf last, as Prometheus histograms have them."""
    bounds = [str(float(bound)) for bound in timings.bounds] + ["+Inf"]  # "1.0", as Histogram
    out, seen = [], 0
    for bound, count in zip(bounds, timings.counts, strict=True):
        seen += count
        out.append((bound, float(seen)))
    return out
