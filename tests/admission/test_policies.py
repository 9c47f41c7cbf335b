"""Adaptive limits, the fair queue and slot hand-off, as pure policies."""

from __future__ import annotations

import asyncio

import pytest

from nobusy.admission.adaptive import AIMDLimit
from nobusy.admission.capacity import Capacity
from nobusy.admission.queue import FairQueue, Waiter
from nobusy.errors import QueueFull, QueueTimeout


def test_aimd_backs_off_on_overload_and_climbs_back_when_busy() -> None:
    limit = AIMDLimit.for_upstream(max_concurrency=20, initial=10)
    for _ in range(10):
        limit.acquire()
    limit.release("overload", (10, 0))
    assert limit.current == 9  # refused at 10 in flight: it holds at most 9
    for _ in range(9):
        limit.release("ok")
    for _ in range(300):  # busy: at least half the slots in use
        for _ in range(limit.current):
            limit.acquire()
        for _ in range(limit.current):
            limit.release("ok")
    assert limit.current == 20  # capped at the ceiling


def test_a_refusal_drops_the_limit_to_what_the_upstream_held_once() -> None:
    limit = AIMDLimit.for_upstream(max_concurrency=None, initial=32)
    sent = []
    for _ in range(8):
        limit.acquire()
        sent.append(limit.load())
    limit.release("overload", sent[4])  # the fifth was refused: four fit
    assert limit.current == 4
    for later in sent[5:]:  # sent under the old limit: counted, not decreased again
        limit.release("overload", later)
    assert limit.current == 4 and limit.drops == 4


def test_aimd_does_not_grow_while_idle() -> None:
    limit = AIMDLimit.for_upstream(max_concurrency=None, initial=8)
    for _ in range(100):
        limit.acquire()
        limit.release("ok")  # one in flight of eight: no evidence more would fit
    assert limit.current == 8


def test_aimd_never_drops_below_one() -> None:
    limit = AIMDLimit.for_upstream(4, 4)
    for _ in range(100):
        limit.acquire()
        limit.release("overload")
    assert limit.current == 1 and limit.has_room()


async def test_priority_first_then_round_robin_across_keys() -> None:
    queue = FairQueue()
    up = frozenset({"u"})
    flood = [Waiter("flooder", "normal", up) for _ in range(5)]
    for w in flood:
        queue.push(w)
    polite = Waiter("polite", "normal", up)
    queue.push(polite)
    vip = Waiter("vip", "high", up)
    queue.push(vip)
    assert queue.position(vip) == 1
    assert queue.position(polite) == 3  # vip, one flooder turn, then polite
    served = [queue.pop_for("u") for _ in range(7)]
    assert served[0] is vip
    assert served.index(polite) == 2  # not behind all five of the flooder's requests


async def test_waiters_only_get_slots_on_their_upstreams() -> None:
    queue = FairQueue()
    a = Waiter("k", "normal", frozenset({"a"}))
    queue.push(a)
    assert queue.pop_for("b") is None
    assert queue.pop_for("a") is a


async def test_freed_slot_goes_to_the_waiter() -> None:
    capacity = Capacity({"u": 1}, initial=1)
    assert capacity.try_take("u")
    assert not capacity.try_take("u")
    ticket = capacity.enqueue(frozenset({"u"}), "k", "normal", patience=5)
    task = asyncio.ensure_future(ticket.wait())
    await asyncio.sleep(0)
    capacity.release("u", "ok", 0.5)
    assert await task == "u"
    assert capacity.limits["u"].in_flight == 1  # handed over, not freed


async def test_queue_full_is_refused_at_once() -> None:
    capacity = Capacity({"u": 1}, initial=1)
    capacity.service["u"] = 10.0  # each answer takes ten seconds
    assert capacity.try_take("u")
    with pytest.raises(QueueFull) as info:
        capacity.enqueue(frozenset({"u"}), "k", "normal", patience=2)
    assert info.value.status_code == 429
    assert info.value.headers["retry-after"] == "11"  # 10 s, padded by a tenth
    assert capacity.queue.size == 0


async def test_timeout_and_abandon_leave_no_trace() -> None:
    capacity = Capacity({"u": 1}, initial=1)
    capacity.service["u"] = 0.01
    assert capacity.try_take("u")
    ticket = capacity.enqueue(frozenset({"u"}), "k", "normal", patience=0.05)
    with pytest.raises(QueueTimeout):
        await ticket.wait()
    assert capacity.queue.size == 0
    capacity.release("u", "ok", 0.01)
    assert capacity.limits["u"].in_flight == 0


async def test_a_key_leaves_headroom_for_others_while_they_are_active() -> None:
    capacity = Capacity({"u": 4}, initial=4)
    capacity.note("polite")  # routers note who asks before taking a slot
    assert capacity.try_take("u", "polite")  # another key has been seen
    capacity.release("u", "ok", 0.1, "polite")
    capacity.note("flood")
    taken = [capacity.try_take("u", "flood") for _ in range(4)]
    assert taken == [True, True, True, False]  # the fourth slot stays free for others
    assert capacity.try_take("u", "polite")  # which another key gets at once


async def test_alone_a_key_may_use_every_slot() -> None:
    capacity = Capacity({"u": 4}, initial=4)
    assert [capacity.try_take("u", "only") for _ in range(4)] == [True] * 4


def _oks_until_probe(limit: AIMDLimit, level: int) -> int:
    """Successful answers at the working limit until it reaches ``level`` again."""
    oks = 0
    while limit.current < level:
        for _ in range(limit.current):
            limit.acquire()
        for _ in range(limit.current):
            limit.release("ok", (limit.in_flight, limit.epoch))
            oks += 1
    return oks


def test_aimd_probes_more_slowly_each_time_a_level_is_refused() -> None:
    limit = AIMDLimit.for_upstream(max_concurrency=None, initial=8)
    gaps = []
    for _ in range(4):
        for _ in range(5):
            limit.acquire()
        limit.release("overload", (5, limit.epoch))  # five are refused: back to four
        for _ in range(4):
            limit.release("ignore")
        assert limit.current == 4
        gaps.append(_oks_until_probe(limit, 5))
    assert all(b >= 1.8 * a for a, b in zip(gaps, gaps[1:], strict=False)), gaps


async def test_a_flooding_key_leaves_a_slot_for_each_quiet_peer() -> None:
    capacity = Capacity({"u": 4}, initial=4)
    for peer in ("n1", "n2", "n3"):
        capacity.note(peer)
    capacity.note("flood")
    assert capacity.try_take("u", "flood")  # its fair share: one of four
    assert not capacity.try_take("u", "flood")  # three free, one kept for each peer
    assert [capacity.try_take("u", p) for p in ("n1", "n2", "n3")] == [True] * 3
    capacity.note("vip", "high")
    assert capacity.try_take("u", "n1") is False  # full: nothing is pre-empted


async def test_higher_classes_slow_the_estimate_of_lower_ones() -> None:
    capacity = Capacity({"u": 2}, initial=2)
    capacity.service["u"] = 1.0  # two slots, one second each: two answers a second
    assert capacity.try_take("u") and capacity.try_take("u")
    normal = capacity.enqueue(frozenset({"u"}), "n", "normal", patience=60)
    _, alone = normal.status()
    # Lately, half of every slot went to high priority.
    now = asyncio.get_running_loop().time()
    grants = capacity._grants["u"]
    grants.clear()
    for i in range(20):
        grants.append((now - 9 + i * 0.45, 0 if i % 2 else 1))
    _, shared = normal.status()
    assert shared > 1.8 * alone
    normal.abandon()


def test_a_queue_at_the_upstream_shows_in_the_time_to_first_token() -> None:
    limit = AIMDLimit.for_upstream(max_concurrency=None, initial=20)
    for _ in range(50):
        assert not limit.first_token(0.05, (20, 0))  # its usual time, at full load
    for _ in range(5):
        assert not limit.first_token(0.12, (20, 0))  # slower, but by less than noise
    assert limit.current == 20
    for _ in range(30):  # requests now wait seconds for their first token
        limit.first_token(2.0, (limit.current, 0))
    assert limit.current < 10 and limit.slowdowns > 0
    before = limit.limit
    assert not limit.first_token(2.0, (20, 0))  # sent under the old limit: old news
    assert limit.limit == before
