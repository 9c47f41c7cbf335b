"""A key's token quota in a real Redis: reserved at admission, spent at the end, shared by the
replicas so that together they never overspend by more than the requests in flight."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator

import pytest

from nobusy.errors import QuotaExhausted, RateLimited
from nobusy.keys import Key
from nobusy.store.redis_client import connect
from nobusy.store.redis_limits import REPLICAS, RedisKeyLimits
from tests.redis_server import RedisServer
from tests.store.test_redis_limits import make_key


def quota_key(quota: int, spent: int = 0, **limits: int) -> Key:
    return dataclasses.replace(make_key(**limits), quota_tokens=quota, balance=quota - spent)


@pytest.fixture()
async def replicas(redis_server: RedisServer) -> AsyncIterator[list[RedisKeyLimits]]:
    """Two replicas' counters on one Redis."""
    made = [RedisKeyLimits(redis_server.url, name) for name in ("r1", "r2")]
    for limits in made:
        await limits.beat()  # alive: their reservations count
    yield made
    for limits in made:
        await limits.aclose()


async def quota_refusal(limits: RedisKeyLimits, key: Key, estimate: int = 10) -> str:
    with pytest.raises(QuotaExhausted) as caught:
        await limits.admit(key, "chat", estimate)
    return caught.value.message


async def test_reservations_of_both_replicas_count(replicas: list[RedisKeyLimits]) -> None:
    one, two = replicas
    key = quota_key(1000)
    await one.admit(key, "chat", 600)
    await two.admit(key, "chat", 399)
    await one.admit(key, "chat", 10)  # 1 token left: admitted while above zero
    said = await quota_refusal(two, key)
    assert "used its token quota (1000, 1009 of them reserved by requests in flight)" in said
    one.done(key.id, 600, 100)  # the answer was short: 500 tokens come back
    await one.flush()
    await two.admit(key, "chat", 491)  # 1000 - 100 spent - 409 reserved
    assert "used its token quota" in await quota_refusal(one, key)


async def test_the_mirror_starts_from_the_store_and_never_counts_less(
    replicas: list[RedisKeyLimits],
) -> None:
    one, _ = replicas
    key = quota_key(1000, spent=990)  # the key store's balance: 10 left
    await one.admit(key, "chat", 50)
    one.done(key.id, 50, 10)
    await one.flush()
    # Another replica's cache still says 10 left; the mirror knows they are spent.
    assert "used its token quota" in await quota_refusal(one, key)
    # A top-up (or an edit) changes the quota: the mirror starts again from the store.
    topped = dataclasses.replace(key, quota_tokens=2000, balance=1000)
    await one.admit(topped, "chat", 50)
    # The store charged more than the mirror saw (requests admitted locally while Redis was
    # away): the store's figure wins.
    behind = dataclasses.replace(topped, balance=0)
    assert "used its token quota" in await quota_refusal(one, behind)


async def test_a_quota_removed_and_given_again_starts_from_the_store(
    replicas: list[RedisKeyLimits],
) -> None:
    one, _ = replicas
    key = quota_key(100)
    await one.admit(key, "chat", 10)
    one.done(key.id, 10, 100)
    await one.flush()
    assert "used its token quota" in await quota_refusal(one, key)
    # Removed (rpm keeps the key reaching Redis), then the same quota given again: the store
    # sets the balance to the whole quota, and so does the mirror.
    await one.admit(dataclasses.replace(key, quota_tokens=None, balance=None, rpm=100), "chat", 1)
    await one.admit(key, "chat", 10)


async def test_a_dead_replica_s_reservations_return(
    replicas: list[RedisKeyLimits], redis_server: RedisServer
) -> None:
    one, _ = replicas
    gone = RedisKeyLimits(redis_server.url, "dead")
    await gone.beat()
    key = quota_key(100)
    await gone.admit(key, "chat", 500)
    assert "used its token quota" in await quota_refusal(one, key)
    client = connect(redis_server.url)
    await client.zrem(REPLICAS, gone.member)  # as when it missed its beats for LIVE seconds
    await client.aclose()
    await one.admit(key, "chat", 10)
    await gone.aclose()


async def test_rate_limits_still_answer_for_keys_with_a_quota(
    replicas: list[RedisKeyLimits],
) -> None:
    one, two = replicas
    key = quota_key(10_000, rpm=2)
    await one.admit(key, "chat", 10)
    await two.admit(key, "chat", 10)
    with pytest.raises(RateLimited, match="limit of 2 requests per minute"):
        await one.admit(key, "chat", 10)


async def test_concurrent_replicas_never_admit_beyond_the_quota(
    replicas: list[RedisKeyLimits],
) -> None:
    """Two replicas, 8 clients each, requests whose real usage differs from the estimate:
    the tokens spent never pass the quota by more than the requests in flight reserved."""
    quota, estimate = 20_000, 300
    key = quota_key(quota)
    spent = 0
    in_flight = most_in_flight = 0
    rng = random.Random(13)

    async def client(limits: RedisKeyLimits) -> None:
        nonlocal spent, in_flight, most_in_flight
        while True:
            try:
                await limits.admit(key, "chat", estimate)
            except QuotaExhausted:
                await limits.flush()
                if not any(r._pending or r._flushing for r in replicas):
                    return
                continue
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            await asyncio.sleep(0)
            actual = rng.randint(50, 2 * estimate)  # some answers longer than estimated
            in_flight -= 1
            spent += actual
            limits.done(key.id, estimate, actual)

    await asyncio.gather(*(client(replicas[i % 2]) for i in range(16)))
    for limits in replicas:
        await limits.flush()
    assert spent >= quota  # the quota was spent, not refused early
    # Every admission saw something left: overspend is at most what was in flight then.
    assert spent - quota <= most_in_flight * 2 * estimate
    client_ = connect(replicas[0].url)
    mirror = await client_.hget(f"nobusy:key:{{{key.id}}}:quota", "spent")
    await client_.aclose()
    assert int(mirror or 0) == spent
