"""Upstream leases in a real Redis: one ceiling and one learned limit for every replica, a
killed replica's slots back after the TTL, a closed one's at once, local shares while Redis
is away; and circuit verdicts told to every replica through pub/sub."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from nobusy.store.redis_leases import RedisLeases
from nobusy.store.redis_signals import RedisSignals, Verdict
from tests.conftest import free_port
from tests.redis_server import RedisServer


def upstream() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"  # one session's Redis: each test its own upstream


def leases(url: str, name: str, ceiling: int, ttl: float = 10.0, initial: int = 32) -> RedisLeases:
    return RedisLeases(url, "r", {name: ceiling}, {name: initial}, ttl)


@pytest.fixture()
async def made() -> AsyncIterator[list[RedisLeases]]:
    """Replicas' leases to close after the test (a test may close some itself)."""
    opened: list[RedisLeases] = []
    yield opened
    for one in opened:
        await one.aclose()


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.02)


async def test_the_ceiling_holds_for_all_replicas_together(
    redis_server: RedisServer, made: list[RedisLeases]
) -> None:
    name = upstream()
    one, two = leases(redis_server.url, name, 4), leases(redis_server.url, name, 4)
    made += [one, two]
    taken = [await (one if i % 2 else two).take(name) for i in range(6)]
    assert taken == [True] * 4 + [False] * 2
    assert one.held(name) == 4  # the fleet's, as the last take saw it
    one.give_back(name)  # told in a task: the caller does not wait
    await eventually(lambda: not one._owed and (one._flushing is None or one._flushing.done()))
    assert await two.take(name) and not await one.take(name)


async def test_a_reserve_leaves_slots_free_for_light_keys(
    redis_server: RedisServer, made: list[RedisLeases]
) -> None:
    name = upstream()
    one = leases(redis_server.url, name, 4)
    made.append(one)
    heavy = (name, "flood", 2, {"quiet"})  # keep 2 for the light key, less what it holds
    assert await one.take(*heavy) and await one.take(*heavy)
    assert not await one.take(*heavy)  # two free, both kept
    assert await one.take(name, "quiet")
    assert not await one.take(*heavy)  # the light key holds 1: 1 is still kept for it
    assert await one.take(name, "quiet")
    one.give_back(name, "quiet")
    assert not await one.take(*heavy)  # told with this take: it holds 1, so 1 is kept


async def test_a_killed_replicas_slots_return_within_the_ttl_a_closed_ones_at_once(
    redis_server: RedisServer, made: list[RedisLeases]
) -> None:
    name = upstream()
    killed = leases(redis_server.url, name, 2, ttl=1.0)
    closed = leases(redis_server.url, name, 2, ttl=1.0)
    other = leases(redis_server.url, name, 2, ttl=1.0)
    made.append(other)
    await other.start()  # beats every 0.2 s: alive throughout
    assert await killed.take(name) and await killed.take(name)
    assert not await other.take(name)
    # "Killed": it never syncs again (it was never started; its takes dated it).
    started = time.monotonic()
    while not await other.take(name):
        assert time.monotonic() - started < 3.0, "a dead replica's slots did not come back"
        await asyncio.sleep(0.1)
    await killed._redis.aclose()
    assert await closed.take(name)  # the second slot of two
    assert not await other.take(name)
    await closed.aclose()  # a graceful exit gives back at once
    assert await other.take(name)


async def test_the_learned_limit_is_one_value_for_the_fleet(
    redis_server: RedisServer, made: list[RedisLeases]
) -> None:
    name = upstream()
    one = leases(redis_server.url, name, 10, initial=8)
    two = leases(redis_server.url, name, 10, initial=8)
    made += [one, two]
    assert await one.take(name)
    assert one.limit[name] == 8.0
    # One replica met a refusal with 5 in flight at epoch 0: the fleet's limit is 4 now.
    one.adjust(name, "drop", 5, 0)
    one.give_back(name)
    await eventually(lambda: one._flushing is not None and one._flushing.done())
    assert [await two.take(name) for _ in range(5)] == [True] * 4 + [False]
    assert two.limit[name] == 4.0 and two.epoch[name] == 1
    two.adjust(name, "drop", 3, 0)  # sent before that decrease: old news, ignored
    two.adjust(name, "add", 0.5)
    assert not await two.take(name)
    assert two.limit[name] == 4.5 and two.epoch[name] == 1


async def test_slots_are_local_shares_while_redis_is_away_and_shared_again_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = RedisServer(tmp_path, free_port()).start()
    name = upstream()
    one, two = leases(own.url, name, 4), leases(own.url, name, 4)
    try:
        await one.start()
        await two.start()
        await eventually(lambda: one.replicas == 2)
        assert await one.take(name)
        own.stop()
        with caplog.at_level(logging.WARNING, "nobusy.state"):
            # 4 over 2 replicas: 2 here, one of them already held.
            assert [await one.take(name) for _ in range(2)] == [True, False]
            assert not one.shared
            own.start()  # empty, as a restarted Redis without persistence
            await eventually(lambda: one.shared and two.shared)
            # The exact counts were written back: this replica holds 2 of the 4.
            assert [await two.take(name) for _ in range(3)] == [True, True, False]
        said = caplog.text
        assert said.count("upstream slots are counted here now, each limit divided by 2") == 1
        assert said.count("upstream slots are shared again") == 1
    finally:
        await one.aclose()
        await two.aclose()
        own.stop()


async def test_circuit_verdicts_reach_the_other_replicas_and_a_new_one_reads_them(
    redis_server: RedisServer,
) -> None:
    name = upstream()
    heard: list[list[Verdict]] = [[], [], []]
    signals = [RedisSignals(redis_server.url, f"m{i}", heard[i].append) for i in range(3)]
    try:
        await signals[0].start()
        await signals[1].start()
        signals[0].tell((name, "open", 30.0, "HTTP 429", 0))
        await eventually(lambda: any(v[0] == name for v in heard[1]), timeout=2)
        assert not any(v[0] == name for v in heard[0])  # not told its own verdict
        assert heard[1][-1][:2] == (name, "open") and heard[1][-1][3] == "HTTP 429"
        await signals[2].start()  # a replica starting reads what is in force
        mine = [v for v in heard[2] if v[0] == name]
        assert len(mine) == 1 and 29 < mine[0][2] <= 30
        signals[1].tell((name, "close", 0.0, "", 0))
        await eventually(lambda: heard[0][-1:] == [(name, "close", 0.0, "", 0)], timeout=2)
    finally:
        for one in signals:
            await one.aclose()


async def test_a_keys_requests_are_served_in_arrival_order_across_replicas(
    redis_server: RedisServer, made: list[RedisLeases]
) -> None:
    name = upstream()
    one, two = leases(redis_server.url, name, 1), leases(redis_server.url, name, 1)
    made += [one, two]
    assert await one.take(name, "k")  # the only slot
    # Both replicas have a waiter of key k: two's came first.
    assert not await two.take(name, "k", turn=(100.0, None))
    one.give_back(name, "k")
    # One frees the slot and asks for its own later waiter: refused, the slot is two's.
    assert not await one.take(name, "k", turn=(200.0, None))
    assert not one.first(name)
    assert await two.take(name, "k", turn=(100.0, None)) and two.first(name)
    two.give_back(name, "k")
    await eventually(lambda: not two._owed and (two._flushing is None or two._flushing.done()))
    # Two has nobody waiting now: one's waiter is first. Another key is not ordered by k's.
    assert await one.take(name, "k", turn=(200.0, None))
    assert not await two.take(name, "k", turn=(50.0, 60.0))
    one.give_back(name, "k")
    await eventually(lambda: not one._owed and (one._flushing is None or one._flushing.done()))
    assert await one.take(name, "other", turn=(300.0, None))


async def test_spares_spare_round_trips_while_the_fleet_is_quiet(
    redis_server: RedisServer, made: list[RedisLeases]
) -> None:
    name = upstream()
    one, two = leases(redis_server.url, name, 64), leases(redis_server.url, name, 64)
    made += [one, two]
    assert await one.take(name, "k")
    assert one.spare[name] == 2 and one.held(name) == 1  # spares are nobody's load
    asked = one._asked[name]
    assert await one.take(name, "k") and await one.take(name, "k")
    assert one._asked[name] == asked  # no round trip for either
    one.give_back(name, "k")
    assert one.spare[name] == 1  # a spare given back stays spare
    # Another replica reports a request waiting: every spare goes back.
    one.waiting = True
    one.give_back(name, "k")
    one._return_spares()
    await eventually(lambda: not one._owed and (one._flushing is None or one._flushing.done()))
    assert await two.take(name)
    assert two.held(name) - two.spare[name] <= 2  # one's last slot, and two's own
