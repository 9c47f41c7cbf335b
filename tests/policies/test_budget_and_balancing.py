"""Retry and hedge budgets, and the order routes are tried in."""

from __future__ import annotations

import random

from nobusy.routing.balancing import plan_routes
from nobusy.routing.budget import Budget
from nobusy.routing.circuit import Circuit
from nobusy.routing.stats import UpstreamStats
from nobusy.settings import Route


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_allows_minimum_plus_ratio() -> None:
    clock = Clock()
    budget = Budget(ratio=0.1, minimum=2, window=10, clock=clock)
    for _ in range(50):
        budget.note()
    spent = sum(budget.try_spend() for _ in range(100))
    assert spent == 2 + 5


def test_budget_window_slides() -> None:
    clock = Clock()
    budget = Budget(ratio=0.0, minimum=1, window=10, clock=clock)
    assert budget.try_spend()
    assert not budget.try_spend()
    clock.now += 11
    assert budget.try_spend()


def test_amplification_stays_near_ten_percent() -> None:
    # Every first attempt fails: retries are capped at ~10% of attempts, not 100%.
    clock = Clock()
    budget = Budget(ratio=0.1, minimum=3, window=10, clock=clock)
    calls = 0
    for _ in range(1000):
        clock.now += 0.001
        budget.note()
        calls += 1
        if budget.try_spend():
            calls += 1
    assert calls / 1000 <= 1.11


def stats(name: str, in_flight: int = 0, ttft: float | None = None) -> UpstreamStats:
    h = UpstreamStats(name, "openai", Circuit())
    h.in_flight = in_flight
    if ttft is not None:
        h.observe_ttft(ttft)
    return h


def test_tiers_keep_their_order_and_open_circuits_are_skipped() -> None:
    routes = [Route("a", tier=0), Route("b", tier=1), Route("c", tier=2)]
    table = {"a": stats("a"), "b": stats("b"), "c": stats("c")}
    table["b"].circuit.failure("down", misconfigured=True)
    ordered, skipped = plan_routes(routes, table, random.Random(1))
    assert [r.upstream for r in ordered] == ["a", "c"]
    assert [r.upstream for r in skipped] == ["b"]


def test_power_of_two_choices_prefers_the_less_loaded() -> None:
    routes = [Route("busy", tier=0), Route("idle", tier=0)]
    table = {"busy": stats("busy", in_flight=9, ttft=0.5), "idle": stats("idle", ttft=0.5)}
    for seed in range(20):
        ordered, _ = plan_routes(routes, table, random.Random(seed))
        assert [r.upstream for r in ordered] == ["idle", "busy"]


def test_weights_spread_first_choice_between_equals() -> None:
    routes = [Route("a", tier=0, weight=1), Route("b", tier=0, weight=1), Route("c", tier=0)]
    table = {n: stats(n) for n in "abc"}
    rng = random.Random(7)
    firsts = {plan_routes(routes, table, rng)[0][0].upstream for _ in range(60)}
    assert firsts == {"a", "b", "c"}


def test_ttft_quantiles_need_enough_samples() -> None:
    h = stats("x")
    assert h.ttft_quantile(0.95) is None
    for i in range(100):
        h.observe_ttft(i / 100)
    p95 = h.ttft_quantile(0.95)
    assert p95 is not None and 0.9 <= p95 <= 0.96
