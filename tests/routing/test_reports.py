"""What replicas tell each other (routing.reports), in-process: a key flooding one replica is
heavy on another, a quiet key there is light and keeps its reserve, and the retry budget
counts the other replicas' failovers."""

from __future__ import annotations

import json

from nobusy.metrics import Metrics
from nobusy.routing import Router
from nobusy.routing.reports import learn, report
from nobusy.settings import ModelAlias, Route, Settings
from nobusy.testing import ScriptedUpstream


def router() -> Router:
    up = ScriptedUpstream("u", [])
    settings = Settings(
        upstreams={"u": up.settings.model_copy(update={"max_concurrency": 4})},
        models={"m": ModelAlias(routes=(Route("u"),))},
        retry_budget=0.1,
        retry_budget_min=1,
    )
    return Router(settings, {"u": up}, Metrics())


async def test_a_flood_elsewhere_is_heavy_here_and_a_quiet_key_keeps_its_reserve() -> None:
    here, there = router(), router()
    for _ in range(40):  # forty requests in a moment: far more than four slots' worth
        there.capacity.note("flood")
    assert there.capacity.try_take("u", "flood")
    here.capacity.note("quiet")
    assert here.capacity.try_take("u", "quiet")
    # Through Redis the reports travel as JSON.
    learn(here, [json.loads(json.dumps(report(there)))])
    learn(there, [json.loads(json.dumps(report(here)))])
    assert here.capacity.others == {"flood": ("normal", 0)}
    assert here.capacity.others_held == {"u": {"flood": 1}}
    # The flood must leave the quiet key's busiest lately free, less what it holds then
    # (which the lease script counts exactly): its slot, once given back, stays free for it.
    assert there.capacity._reserve("u", "flood") == (1, frozenset({"quiet"}))
    assert here.capacity._reserve("u", "quiet") == (0, frozenset())  # light: no reserve


async def test_the_retry_budget_counts_the_other_replicas_failovers() -> None:
    here, there = router(), router()
    budget = here.retry_budgets["u"]
    for _ in range(10):
        budget.note()
        there.retry_budgets["u"].note()
    assert [there.retry_budgets["u"].try_spend() for _ in range(3)] == [True, True, False]
    learn(here, [report(there)])
    assert budget.others == (10, 2)
    # 1 + 10% of 20 requests = 3 failovers for the fleet; the other replica spent 2.
    assert [budget.try_spend() for _ in range(2)] == [True, False]
