"""Tiers and spill in-process: the pure decision and bookkeeping, then the real Router and
Walker over scripted upstreams deciding where a request may take a slot."""

from __future__ import annotations

import math
from typing import Any

import pytest

from nobusy.metrics import Metrics
from nobusy.routing import Router, Walker
from nobusy.routing.pool import tier_rows
from nobusy.routing.spill import TierBook, TierLoad, choose_tier, expected_wait
from nobusy.settings import ModelAlias, Route, Settings
from nobusy.testing import ScriptedUpstream
from nobusy.testing import Settings as ScriptedSettings
from nobusy.upstreams import build_upstream, settings_class

BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_tier_with_room_has_no_wait() -> None:
    assert expected_wait(TierLoad(room=True, ahead=50, rate=1)) == 0.0
    assert expected_wait(TierLoad(room=False, ahead=9, rate=5)) == 2.0
    assert expected_wait(TierLoad(room=False, ahead=0, rate=0)) == math.inf


def test_a_full_tier_keeps_requests_until_the_wait_passes_spill_after() -> None:
    cloud = TierLoad(room=True, ahead=0, rate=10)
    # Full, but 7 waiting at 4 per second is a 2 s wait: within spill_after 3, stay local.
    assert choose_tier([TierLoad(False, 7, 4), cloud], 3.0) == 0
    # 15 waiting is a 4 s wait: spill.
    assert choose_tier([TierLoad(False, 15, 4), cloud], 3.0) == 1
    # Every tier over: the shortest wait, the cheaper on a tie.
    assert choose_tier([TierLoad(False, 15, 4), TierLoad(False, 39, 4)], 1.0) == 0
    assert choose_tier([TierLoad(False, 3, 1), TierLoad(False, 3, 1)], 1.0) == 0


def test_the_service_rate_is_slots_over_the_time_an_answer_holds_one() -> None:
    book = TierBook()
    # Before any answer ended: the upstreams' whole answer times.
    assert book.rate({"a": 4, "b": 4}, {"a": 2.0, "b": 1.0}) == pytest.approx(6.0)
    book.finished("a", 0.5)
    assert book.rate({"a": 4, "b": 4}, {"a": 2.0, "b": 1.0}) == pytest.approx(12.0)
    for _ in range(50):  # smoothed towards what the answers show
        book.finished("a", 1.0)
    assert book.rate({"a": 4}, {}) == pytest.approx(4.0, rel=0.01)


def test_spilled_answers_and_their_cost_are_tallied_per_tier() -> None:
    book = TierBook()
    book.served(0, 0, 0, "local")
    book.served(1, 0, 1500, "cloud")
    book.served(1, 1, 700, "cloud")  # an alias whose cheapest tier is 1: not spilled
    assert book.tallies[0].answered == 1 and book.tallies[0].spilled == 0
    assert book.tallies[1].answered == 2 and book.tallies[1].spilled == 1
    assert book.tallies[1].spill_cost_micros == 1500


def _router(spill_after: float | None) -> Router:
    local = ScriptedUpstream("local", settings=ScriptedSettings(max_concurrency=1))
    cloud = ScriptedUpstream("cloud", settings=ScriptedSettings(tier=1))
    ups = {u.name: u for u in (local, cloud)}
    # One flat list: the cloud's tier comes from its upstream's `tier`, not its place.
    alias = ModelAlias(routes=(Route("local"), Route("cloud")), spill_after=spill_after)
    settings = Settings(
        upstreams={name: u.settings for name, u in ups.items()}, models={"m": alias}
    )
    return Router(settings, ups, Metrics())


async def test_a_full_local_tier_queues_its_request_within_spill_after() -> None:
    router = _router(spill_after=5.0)
    assert [r.tier for r in router.models["m"].routes] == [0, 1]
    first = Walker(router, "m", BODY, "r1")
    assert first.reserve() and first.reserved == Route("local", tier=0)
    second = Walker(router, "m", BODY, "r2")
    # The local slot is taken; one request ahead at ~1 per second is well within 5 s.
    assert not second.reserve()
    assert second.ticket is not None and second.allowed == {"local"}
    second.close()
    first.router.capacity.release("local", "ok", 0.5)


async def test_a_local_tier_waiting_longer_than_spill_after_spills() -> None:
    router = _router(spill_after=0.5)
    first = Walker(router, "m", BODY, "r1")
    assert first.reserve()
    second = Walker(router, "m", BODY, "r2")
    assert second.reserve() and second.reserved == Route("cloud", tier=1)
    router.served("m", "cloud", 2500)
    router.served("m", "local", 0)
    rows = {row["tier"]: row for row in tier_rows(router)}
    assert rows[1]["spilled"] == 1 and rows[1]["spilled_share"] == 0.5
    assert rows[1]["spill_cost"] == 0.0025 and rows[0]["upstreams"] == ["local"]


async def test_without_spill_after_the_next_tier_takes_the_overflow_at_once() -> None:
    router = _router(spill_after=None)
    assert Walker(router, "m", BODY, "r1").reserve()
    second = Walker(router, "m", BODY, "r2")
    assert second.reserve() and second.reserved == Route("cloud", tier=1)


def test_a_server_with_slots_keeps_its_limit_at_least_there() -> None:
    spec = {"kind": "vllm", "base_url": "http://127.0.0.1:9/v1", "default_model": "m", "slots": 6}
    upstreams = {"gpu": build_upstream("gpu", settings_class("vllm").model_validate(spec))}
    settings = Settings(
        upstreams={"gpu": upstreams["gpu"].settings},
        models={"m": ModelAlias(routes=(Route("gpu"),))},
        initial_concurrency=2,
    )
    router = Router(settings, upstreams, Metrics())
    # First tokens slowing cannot push it below the slots the server says it runs at once.
    assert router.capacity.limits["gpu"].current == 6


async def test_a_waiter_whose_wait_grows_past_spill_after_spills() -> None:
    router = _router(spill_after=5.0)
    first = Walker(router, "m", BODY, "r1")
    assert first.reserve()
    second = Walker(router, "m", BODY, "r2")
    assert not second.reserve()  # queued for the local slot: about a second's wait
    # The local server slows down: an answer now takes 30 s, so the queue's estimate passes
    # spill_after and the waiter takes the cloud's free slot at its next update.
    router.capacity.service["local"] = 30.0
    await second.granted()
    assert second.reserved == Route("cloud", tier=1) and second.ticket is None
    assert router.capacity.queue.size == 0
    router.capacity.release("local", "ok", 0.5)
    router.capacity.release("cloud", "ok", 0.5)
    assert router.capacity.limits["local"].in_flight == 0
    assert router.capacity.limits["cloud"].in_flight == 0
