"""Placement: the server holding the prefix first, unless its load is over the bound; stale
metrics fall back to nobusy's own count against the learned limit."""

from __future__ import annotations

from typing import Any

from nobusy.routing.placement import Placement, PrefixIndex, ServerView, prefix_hashes
from nobusy.settings import Route
from nobusy.upstreams.server_metrics import Reading, ServerSignals

NOW = 100.0
SYSTEM = "Answer from the handbook below.\n" + "handbook text " * 200


def _body(question: str, system: str = SYSTEM) -> dict[str, Any]:
    return {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]
    }


def _pool(
    loads: dict[str, float | None], slots: int = 4
) -> tuple[Placement, dict[str, ServerSignals]]:
    signals: dict[str, ServerSignals] = {}
    views: dict[str, ServerView] = {}
    for name, load in loads.items():
        s = ServerSignals(slots=slots)
        if load is not None:
            s.reading, s.at = Reading(running=min(load, slots), waiting=max(load - slots, 0)), NOW
        signals[name] = s
        views[name] = ServerView(s, lambda: 0, lambda: slots)
    return Placement(views, clock=lambda: NOW), signals


ROUTES = [Route("a"), Route("b"), Route("c")]


def test_the_server_with_the_cached_prefix_goes_first() -> None:
    placement, _ = _pool({"a": 1, "b": 1, "c": 1})
    placement.placed_on("b", _body("first question"))
    assert placement.order(ROUTES, _body("a follow-up"))[0] == Route("b")


def test_an_overloaded_server_is_left_for_another() -> None:
    placement, signals = _pool({"a": 1, "b": 1, "c": 1})
    placement.placed_on("b", _body("first question"))
    signals["b"].reading = Reading(running=4, waiting=6)
    order = placement.order(ROUTES, _body("a follow-up"))
    assert order[-1] == Route("b")


def test_a_queue_outweighs_an_empty_server_without_cache() -> None:
    placement, _ = _pool({"a": 9, "b": 0, "c": 4})
    assert placement.order(ROUTES, _body("q"))[0] == Route("b")


def test_stale_metrics_fall_back_to_the_learned_limit() -> None:
    placement, signals = _pool({"a": 0, "b": 0, "c": 0})
    signals["a"].at = NOW - 60  # not read for a minute: not believed
    views = placement.servers
    views["a"] = ServerView(signals["a"], lambda: 0, lambda: 4)
    views["b"] = ServerView(signals["b"], lambda: 0, lambda: 4)
    assert signals["a"].load(NOW) is None
    placement.placed_on("a", _body("first"))
    assert placement.order(ROUTES, _body("again"))[0] == Route("a")
    views["a"] = ServerView(signals["a"], lambda: 12, lambda: 4)  # nobusy's own count: full
    assert placement.order(ROUTES, _body("again"))[0] != Route("a")


def test_other_tiers_and_plain_upstreams_keep_their_order() -> None:
    placement, _ = _pool({"a": 9, "b": 0})
    routes = [Route("a"), Route("b"), Route("cloud", tier=1)]
    assert placement.order(routes, _body("q")) == [Route("b"), Route("a"), Route("cloud", tier=1)]
    mixed = [Route("a"), Route("plain")]
    assert placement.order(mixed, _body("q")) == mixed


def test_the_prefix_index_is_bounded_and_matches_leading_blocks() -> None:
    index = PrefixIndex(capacity=50)
    hashes = prefix_hashes(_body("q")["messages"])
    assert len(hashes) > 40
    index.add(hashes[:20])
    assert index.match(hashes) == 20
    index.add(prefix_hashes(_body("x", system="something else " * 300)["messages"]))
    assert len(index.blocks) == 50
