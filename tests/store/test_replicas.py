"""The fleet as heartbeats show it, and the health of Redis as a replica reports it."""

from __future__ import annotations

from nobusy.store.redis_limits import RedisKeyLimits
from nobusy.store.replicas import Fleet
from tests.conftest import free_port
from tests.redis_server import RedisServer


async def test_each_replica_sees_the_others_figures(redis_server: RedisServer) -> None:
    fleets = [Fleet(name) for name in ("fa", "fb")]
    fleets[1].figures = lambda: (3, 2, True)
    one, two = (RedisKeyLimits(redis_server.url, f.replica, fleet=f) for f in fleets)
    await one.beat()
    await two.beat()
    await one.beat()
    seen = {r.id: r for r in fleets[0].replicas()}
    assert {"fa", "fb"} <= set(seen)
    assert (seen["fb"].in_flight, seen["fb"].queue, seen["fb"].draining) == (3, 2, True)
    assert seen["fa"].in_flight == 0  # this replica: its own figures, live
    await two.aclose()  # a replica that stops leaves at once
    await one.beat()
    assert "fb" not in {r.id for r in fleets[0].replicas()}
    await one.aclose()


def test_a_heartbeat_without_figures_is_skipped() -> None:
    fleet = Fleet("me")
    beats = [b"old:1", b"0.5", b"", b"odd:2", b"0.1", b"{not json", b"ok:3", b"1.0"]
    figures = '{"id": "ok", "in_flight": 1, "queue": 0, "draining": false, "version": "0.1.0"'
    beats.append((figures + ', "started": 1.0}').encode())
    assert fleet.read([3, beats], "me:0") == 3
    assert [r.id for r in fleet.replicas()] == ["me", "ok"]


async def test_health_says_degraded_or_down_without_the_password() -> None:
    url = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    local, refuse = RedisKeyLimits(url, "r1", "local"), RedisKeyLimits(url, "r1", "refuse")
    assert local.health().status == "ok"  # until tried
    for limits in (local, refuse):
        await limits.beat()
    degraded, down = local.health(), refuse.health()
    assert degraded.status == "degraded" and "key limits local" in degraded.detail
    assert down.status == "down" and "refusing keys with limits" in down.detail
    for health in (degraded, down):
        assert health.since is not None and not health.ok
        assert "hunter2" not in str(health.json())
        assert health.url.startswith("redis://:***@127.0.0.1:")
    await local.aclose()
    await refuse.aclose()
