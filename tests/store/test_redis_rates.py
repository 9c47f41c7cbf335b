"""An upstream's rpm and tpm decided in Redis with its lease: one window for every replica,
corrected by the usage reported, and local shares while Redis is away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from nobusy.store.redis_leases import RedisLeases
from tests.conftest import free_port
from tests.redis_server import RedisServer
from tests.store.test_redis_leases import upstream


def leases(url: str, name: str, rpm: int | None = None, tpm: int | None = None) -> RedisLeases:
    return RedisLeases(url, "r", {name: 100}, {name: 100}, rates={name: (rpm, tpm)})


@pytest.fixture()
async def made() -> AsyncIterator[list[RedisLeases]]:
    opened: list[RedisLeases] = []
    yield opened
    for one in opened:
        await one.aclose()


async def settled(one: RedisLeases, condition: Callable[[], bool] = lambda: True) -> None:
    """Until what ``one`` owes Redis is told (and ``condition`` holds)."""
    deadline = time.monotonic() + 5
    while one._owed or one._corrections or not condition():
        assert time.monotonic() < deadline, "not told within the time allowed"
        await asyncio.sleep(0.02)
    if one._flushing is not None:
        await one._flushing


async def test_requests_per_minute_hold_for_all_replicas_together(
    redis_server: RedisServer, made: list[RedisLeases]
) -> None:
    name = upstream()
    one, two = leases(redis_server.url, name, rpm=3), leases(redis_server.url, name, rpm=3)
    made += [one, two]
    taken = [await (one if i % 2 else two).take(name) for i in range(5)]
    assert taken == [True, True, True, False, False]
    assert one.window[name] == (3, 0)
    # Full: no round trip for a moment, and the wait is what is left of the minute.
    assert one.resting(name) > 0 and 55 < one.window_wait(name) <= 60
    for _ in range(3):
        (one if _ % 2 else two).give_back(name)  # slots come back; the window does not
    await settled(one)
    await settled(two)
    one._full_until.clear()
    assert not await one.take(name)


async def test_tokens_are_reserved_then_corrected_by_the_usage(
    redis_server: RedisServer, made: list[RedisLeases]
) -> None:
    name = upstream()
    one, two = leases(redis_server.url, name, tpm=100), leases(redis_server.url, name, tpm=100)
    made += [one, two]
    assert await one.take(name, tokens=80)
    assert not await two.take(name, tokens=30)  # 80 + 30 > 100
    one.give_back(name)
    one.correct(name, 20 - 80)  # it used 20
    await settled(one)
    assert one.window[name] == (1, 20)
    two._full_until.clear()
    assert await two.take(name, tokens=30)
    assert two.window[name] == (2, 50)


async def test_an_upstream_without_rates_keeps_no_window(
    redis_server: RedisServer, made: list[RedisLeases]
) -> None:
    name = upstream()
    one = leases(redis_server.url, name)
    made.append(one)
    assert all([await one.take(name, tokens=10**6) for _ in range(5)])
    assert name not in one.window and one.resting(name) == 0
    assert await one._redis.exists(f"nobusy:up:{{{name}}}:req") == 0


async def test_rates_are_local_shares_while_redis_is_away(tmp_path: Path) -> None:
    own = RedisServer(tmp_path, free_port()).start()
    name = upstream()
    one, two = leases(own.url, name, rpm=4), leases(own.url, name, rpm=4)
    try:
        await one.start()
        await two.start()
        deadline = time.monotonic() + 5
        while one.replicas < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        own.stop()
        # 4 a minute over 2 replicas: 2 here.
        assert [await one.take(name) for _ in range(3)] == [True, True, False]
        assert not one.shared and one.window_wait(name) > 0
    finally:
        await one.aclose()
        await two.aclose()
        own.stop()
