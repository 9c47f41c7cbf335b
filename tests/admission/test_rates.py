"""An upstream's rpm and tpm window, counted in the process, on an injected clock; and the
capacity that skips an upstream whose window is full and hands it to a waiter once it is not."""

from __future__ import annotations

import asyncio

import pytest

from nobusy.admission.capacity import Capacity
from nobusy.admission.rates import UpstreamRates, full
from nobusy.errors import QueueFull


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_full_counts_requests_and_tokens_and_lets_a_first_request_in() -> None:
    assert full((3, None), 3, 0, 0) and not full((3, None), 2, 0, 0)
    assert full((None, 100), 1, 60, 41) and not full((None, 100), 1, 60, 40)
    assert not full((None, 100), 0, 0, 500)  # a first request always fits, as for a key
    assert not full((None, None), 10**6, 10**9, 10**9)


def test_requests_per_minute_slide_with_the_window() -> None:
    clock = Clock()
    rates = UpstreamRates({"a": (3, None), "free": (None, None)}, clock)
    assert "free" not in rates.ceilings and rates.admit("free", 10**6)
    assert [rates.admit("a") for _ in range(4)] == [True, True, True, False]
    assert rates.used("a") == (3, 0)
    clock.now += 30
    assert rates.wait("a") == pytest.approx(30)
    assert not rates.admit("a")
    clock.now += 30.001  # the first three leave the window together
    assert rates.wait("a") == 0 and rates.admit("a")
    assert rates.used("a") == (1, 0)


def test_tokens_are_estimated_then_corrected_by_the_usage_reported() -> None:
    clock = Clock()
    rates = UpstreamRates({"a": (None, 100)}, clock)
    assert rates.admit("a", 60)
    assert not rates.room("a", 50)  # 60 + 50 > 100
    rates.done("a", 60, 20)  # it used 20: the window holds 20 now
    assert rates.used("a") == (1, 20)
    assert rates.admit("a", 80) and not rates.room("a", 1)
    clock.now += 61  # estimates and corrections both leave the window
    assert rates.used("a") == (0, 0)


def test_a_share_divides_each_ceiling() -> None:
    rates = UpstreamRates({"a": (4, None)}, Clock())
    assert [rates.admit("a", share=2) for _ in range(3)] == [True, True, False]
    assert rates.admit("a")  # the whole ceiling again


def test_a_full_window_is_skipped_like_a_full_upstream() -> None:
    clock = Clock()
    capacity = Capacity({"a": None, "b": None}, clock=clock, rates={"a": (2, None)})
    assert capacity.try_take("a", tokens=5) and capacity.try_take("a")
    assert not capacity.try_take("a") and capacity.try_take("b")
    capacity.release("a", "ok", 0.1)
    assert not capacity.try_take("a")  # a free slot, but the window is full
    view = capacity.snapshot()["a"]
    assert (view["window_requests"], view["window_tokens"]) == (2, 5)
    assert "window_requests" not in capacity.snapshot()["b"]


def test_an_answer_corrects_the_window_by_its_usage() -> None:
    capacity = Capacity({"a": None}, clock=Clock(), rates={"a": (None, 100)})
    assert capacity.try_take("a", tokens=90)
    assert not capacity.try_take("a", tokens=20)
    capacity.release("a", "ok", 0.1, tokens=(90, 30))
    assert capacity.try_take("a", tokens=20)


async def test_a_waiter_gets_the_upstream_when_its_window_frees_and_is_told_when_too_long() -> None:
    clock = Clock()
    capacity = Capacity({"a": None}, clock=clock, rates={"a": (1, None)})
    assert capacity.try_take("a")
    capacity.release("a", "ok", 0.1)
    with pytest.raises(QueueFull):  # the window frees in a minute: too long to wait
        capacity.enqueue(frozenset({"a"}), "k", "normal", patience=5)
    clock.now += 50
    ticket = capacity.enqueue(frozenset({"a"}), "k", "normal", patience=30)
    assert ticket.status()[1] >= 10  # the window frees in ten seconds
    capacity.dispatch({"a"})
    assert not ticket.waiter.future.done()
    clock.now += 10.001
    capacity.dispatch({"a"})  # a ticket does this each second while it waits
    assert await asyncio.wait_for(ticket.waiter.future, 1) == "a"
    assert capacity.rates.used("a") == (1, 0)
