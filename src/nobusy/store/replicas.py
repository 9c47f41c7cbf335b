"""The replicas serving together, as their heartbeats last showed them.

With ``state`` each replica publishes a few figures with its heartbeat (requests in flight,
queue depth, draining, version, start time; ``RedisKeyLimits.beat``), and the beat's answer
brings back every live replica's, so the status board and ``/metrics`` read the fleet from
memory, never from Redis on a scrape. Without ``state`` the fleet is this process alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nobusy import __version__
from nobusy.store.redis_client import LUA_CLOCK

__all__ = ["BEAT_SCRIPT", "FLEET", "Fleet", "Replica"]

FLEET = "nobusy:fleet"  # a hash: heartbeat member -> its figures (JSON)

# KEYS: replicas (a sorted set: member -> time of its last beat), fleet. ARGV: member, live
# (seconds a beat counts), this replica's figures. Prunes the replicas not seen for ``live``
# seconds, beats, and returns the number beating and, for each, its member, the seconds since
# its beat (on Redis's clock, so replicas' clocks need not agree) and its figures.
BEAT_SCRIPT = (
    LUA_CLOCK
    + """
local horizon = '(' .. at(now - tonumber(ARGV[2]))
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', horizon)) do
  redis.call('HDEL', KEYS[2], m)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
redis.call('ZADD', KEYS[1], at(now), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local fleet, beats = {}, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #beats, 2 do
  fleet[#fleet + 1] = beats[i]
  fleet[#fleet + 1] = at(now - tonumber(beats[i + 1]))
  fleet[#fleet + 1] = redis.call('HGET', KEYS[2], beats[i]) or ''
end
return {#beats / 2, fleet}
"""
)


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica's figures at its last heartbeat."""

    id: str
    in_flight: int
    queue: int
    draining: bool
    version: str
    started: float  # Unix time
    seen: float  # Unix time of the heartbeat, on this process's clock

    def json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "in_flight": self.in_flight,
            "queue": self.queue,
            "draining": self.draining,
            "version": self.version,
            "started": self.started,
            "last_seen": round(max(0.0, now - self.seen), 3),
        }


class Fleet:
    """This replica's figures, read when asked, and the others' as the last beat read them."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.started = time.time()
        # Set by ``nobusy.state`` once the router and the drain exist: in flight, queue depth,
        # draining.
        self.figures: Callable[[], tuple[int, int, bool]] = lambda: (0, 0, False)
        self._others: dict[str, Replica] = {}  # by heartbeat member, as last read

    def me(self) -> Replica:
        in_flight, queue, draining = self.figures()
        now = time.time()
        return Replica(self.replica, in_flight, queue, draining, __version__, self.started, now)

    def published(self) -> str:
        """What this replica publishes with its heartbeat."""
        me = self.me()
        figures = {"id": me.id, "in_flight": me.in_flight, "queue": me.queue}
        figures |= {"draining": me.draining, "version": me.version, "started": me.started}
        return json.dumps(figures)

    def read(self, answer: Sequence[Any], own: str) -> int:
        """Keep the replicas a heartbeat's answer (``BEAT_SCRIPT``'s) shows, other than this
        one (``own`` is its member: it is shown live instead); return how many beat."""
        count, flat = answer
        now = time.time()
        others: dict[str, Replica] = {}
        for i in range(0, len(flat), 3):
            member, age, figures = (_text(x) for x in flat[i : i + 3])
            try:
                data = json.loads(figures)
                replica = Replica(
                    str(data["id"]),
                    int(data["in_flight"]),
                    int(data["queue"]),
                    bool(data["draining"]),
                    str(data["version"]),
                    float(data["started"]),
                    now - float(age),
                )
            except (ValueError, KeyError, TypeError):
                continue  # a replica of another version, or one that beat without figures
            if member != own:
                others[member] = replica
        self._others = others
        return int(count)

    def replicas(self) -> list[Replica]:
        """Every replica by id: this one now, the others as last seen (a replica restarted
        under the same id shows once, by its latest beat)."""
        by_id: dict[str, Replica] = {}
        for replica in self._others.values():
            if replica.id not in by_id or replica.seen > by_id[replica.id].seen:
                by_id[replica.id] = replica
        by_id[self.replica] = self.me()
        return [by_id[name] for name in sorted(by_id)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
