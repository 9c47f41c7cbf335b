"""Key limits in a real Redis: the same decisions and messages as KeyLimits, shared by every
replica, a dead replica's slots freed, and local limits while Redis is away."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nobusy.admission.limits import KeyLimits
from nobusy.errors import RateLimited, StorageUnavailable
from nobusy.keys import Key
from nobusy.store.interfaces import LimitCounters
from nobusy.store.redis_client import connect
from nobusy.store.redis_limits import REPLICAS, RedisKeyLimits
from tests.conftest import free_port
from tests.redis_server import RedisServer


def make_key(
    rpm: int | None = None, tpm: int | None = None, max_concurrency: int | None = None
) -> Key:
    return Key(
        id=uuid.uuid4().hex,
        name="team-a",
        prefix="nb-x",
        hash="",
        priority="normal",
        rpm=rpm,
        tpm=tpm,
        max_concurrency=max_concurrency,
        quota_tokens=None,
        balance=None,
        models=None,
        max_wait=None,
        created_at=datetime.now(UTC),
        expires_at=None,
        revoked_at=None,
        last_used_at=None,
    )


@pytest.fixture()
async def replicas(redis_server: RedisServer) -> AsyncIterator[list[RedisKeyLimits]]:
    """Two replicas' counters on one Redis."""
    made = [RedisKeyLimits(redis_server.url, name) for name in ("r1", "r2")]
    yield made
    for limits in made:
        await limits.aclose()


async def refusal(limits: LimitCounters, key: Key, estimate: int = 10) -> str:
    with pytest.raises(RateLimited) as caught:
        await limits.admit(key, "chat", estimate)
    return caught.value.message


def same_words(message: str) -> str:
    return re.sub(r"resets in \d+s", "resets in Ns", message)


async def refusals(limits: LimitCounters) -> list[str]:
    """What ``limits`` says to the request past each kind of limit."""
    rpm, tpm, most = make_key(rpm=3), make_key(tpm=1000), make_key(max_concurrency=2)
    for _ in range(3):
        await limits.admit(rpm, "chat", 10)
    await limits.admit(tpm, "chat", 600)
    await limits.admit(most, "chat", 10)
    await limits.admit(most, "chat", 10)
    said = [await refusal(limits, rpm), await refusal(limits, tpm, 600)]
    return [*said, await refusal(limits, most)]


async def test_rpm_tpm_and_concurrency_refused_as_key_limits_refuses(
    replicas: list[RedisKeyLimits],
) -> None:
    said, expected = await refusals(replicas[0]), await refusals(KeyLimits())
    assert [same_words(m) for m in said] == [same_words(m) for m in expected]
    assert "limit of 3 requests per minute; it resets in 60s" in said[0]


async def test_a_limit_holds_across_replicas(replicas: list[RedisKeyLimits]) -> None:
    one, two = replicas
    key = make_key(rpm=5)
    for i in range(5):
        await replicas[i % 2].admit(key, "chat", 10)
    for limits in (one, two):
        assert "limit of 5 requests per minute" in await refusal(limits, key)


async def test_concurrency_is_given_back_by_done_on_any_replica(
    replicas: list[RedisKeyLimits],
) -> None:
    one, two = replicas
    key = make_key(max_concurrency=2)
    await one.admit(key, "chat", 10)
    await two.admit(key, "chat", 10)
    assert "2 requests in flight" in await refusal(one, key)
    two.done(key.id, 10, 5)
    await two.flush()
    await one.admit(key, "chat", 10)


async def test_done_replaces_the_estimate_by_the_usage(replicas: list[RedisKeyLimits]) -> None:
    one, two = replicas
    key = make_key(tpm=1000)
    await one.admit(key, "chat", 600)
    assert "1000 tokens per minute" in await refusal(two, key, 600)
    one.done(key.id, 600, 100)  # the answer was short: 100 tokens in the window, not 600
    await one.flush()
    await two.admit(key, "chat", 600)


async def test_a_replica_gone_frees_its_slots(
    replicas: list[RedisKeyLimits], redis_server: RedisServer
) -> None:
    one, _ = replicas
    key = make_key(max_concurrency=2)
    gone, closed = (RedisKeyLimits(redis_server.url, name) for name in ("dead", "closed"))
    await gone.admit(key, "chat", 10)
    await closed.admit(key, "chat", 10)
    assert "2 requests in flight" in await refusal(one, key)
    await closed.aclose()  # a replica that stops leaves at once
    await one.admit(key, "chat", 10)
    client = connect(redis_server.url)
    await client.zrem(REPLICAS, gone.member)  # as when it missed its beats for LIVE seconds
    await client.aclose()
    await one.admit(key, "chat", 10)
    await gone.aclose()


async def test_keys_without_limits_never_reach_redis(replicas: list[RedisKeyLimits]) -> None:
    one, _ = replicas
    key = make_key()
    await one.admit(key, "chat", 10)
    one.done(key.id, 10, 20)
    assert not one._pending and one._flushing is None


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to stop and start again."""
    server = RedisServer(tmp_path, free_port()).start()
    yield server
    server.stop()


async def test_local_limits_while_redis_is_away_then_shared_again(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nobusy.state")
    limits, other = (RedisKeyLimits(own_redis.url, name) for name in ("r1", "r2"))
    await limits.start()
    await other.beat()
    await limits.beat()
    assert limits.replicas == 2
    key = make_key(rpm=6)
    await limits.admit(key, "chat", 10)  # in flight through Redis across the outage
    own_redis.stop()
    await limits.beat()
    assert not limits.shared
    for _ in range(3):  # 6 / 2 replicas, counted locally
        await limits.admit(key, "chat", 10)
    assert "limit of 3 requests per minute" in await refusal(limits, key)
    own_redis.start()  # empty: a restarted Redis without persistence
    await limits.beat()
    assert limits.shared
    client = connect(own_redis.url)
    fl = f"nobusy:key:{{{key.id}}}:fl"
    assert await client.hget(fl, limits.member) == b"1"  # the one from before, written back
    for _ in range(6):
        await limits.admit(key, "chat", 10)
    assert "limit of 6 requests per minute" in await refusal(limits, key)
    for _ in range(3):
        limits.done(key.id, 10, 10)  # the local ones first
    assert await client.hget(fl, limits.member) == b"7"
    await client.aclose()
    await limits.aclose()
    await other.aclose()
    said = [r.getMessage() for r in caplog.records if r.name == "nobusy.state"]
    assert sum("key limits are local now, each limit divided by 2" in s for s in said) == 1
    assert sum("key limits are shared again" in s for s in said) == 1


async def test_unreachable_redis_local_or_refused(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    local = RedisKeyLimits(url, "r1", "local", replicas_hint=2)
    await local.start()
    key = make_key(rpm=4)
    for _ in range(2):
        await local.admit(key, "chat", 10)
    assert "limit of 2 requests per minute" in await refusal(local, key)
    refuse = RedisKeyLimits(url, "r1", "refuse")
    with pytest.raises(StorageUnavailable):
        await refuse.admit(key, "chat", 10)
    await local.aclose()
    await refuse.aclose()
    assert "hunter2" not in caplog.text
    assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in caplog.text
