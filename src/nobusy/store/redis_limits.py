"""Each key's rate and concurrency counters in Redis, shared by every replica.

The ``LimitCounters`` backend chosen when ``state`` names a Redis; the checks are
``nobusy.admission.limits``' and the windows slide exactly as ``KeyLimits`` counts them: a
request counts for sixty seconds from its admission, its estimated tokens with it, and the
correction by its real usage from when it ends. One Lua script per admission reads and updates
a key's counters atomically in one round trip, on Redis's clock, so replicas whose clocks
differ still share one window.

Per key: ``req`` (a sorted set of admissions by time), ``tok`` (token entries by time, each
member ending in its amount), ``sum`` (the tokens in ``tok``) and ``fl`` (requests in flight
by replica). A replica's in-flight count is believed while the replica beats (``replicas``,
every ``BEAT`` seconds): a replica killed holding slots frees them within ``LIVE`` seconds.

A key with a token quota also has ``quota`` (the quota it mirrors and the tokens spent, as
Redis saw the requests end) and ``rsv`` (the estimates reserved by requests in flight, by
replica, believed like ``fl``). The durable balance stays in the key store; the mirror starts
from it (``quota_tokens - balance`` spent), never counts less than it, and starts again when
the quota changes (a top-up or an edit). A request is admitted while quota - spent - reserved
is above zero, and reserves its estimate; ``done`` replaces the reservation by the tokens spent.

``done`` is synchronous in the protocol; here it schedules the reconciliation as a task (the
request's answer does not wait for it). When Redis fails, ``on_state_failure`` decides:
``refuse`` answers 503; ``local`` admits with ``KeyLimits`` in this process, each limit divided
by the replicas last seen beating (``replicas_hint`` before any were), says so once in the log,
and returns to Redis once a beat succeeds again, writing back its exact in-flight counts.
The beat also publishes this replica's figures and reads the fleet's
(``nobusy.store.replicas``); ``health`` says how Redis is (``nobusy.store.health``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import secrets
import time
from collections import Counter
from typing import Literal

from nobusy.admission.limits import WINDOW, KeyLimits, check_counts, check_key, limited
from nobusy.errors import QuotaExhausted, RateLimited, StorageUnavailable
from nobusy.keys import Key
from nobusy.store.health import Health
from nobusy.store.redis_client import ERRORS, LUA_CLOCK, Script, bounded, connect, redact, scrub
from nobusy.store.replicas import BEAT_SCRIPT, FLEET, Fleet

__all__ = ["BEAT", "LIVE", "RedisKeyLimits"]

BEAT = 2.0  # seconds between a replica's heartbeats
LIVE = 8  # seconds after its last beat that a replica's in-flight counts still hold
KEEP = int(2 * WINDOW)  # seconds a key's window outlives its last write
KEEP_IN_FLIGHT = 86400  # a key's in-flight counts: longer than any stream
_COALESCE = 0.005  # seconds a done waits for an admission to ride on (then a call of its own)
REPLICAS = "nobusy:replicas"

log = logging.getLogger("nobusy.state")

# The end of a request (``done``), for the key whose six keys (req, tok, sum, fl, quota, rsv)
# start after KEYS[k]: its in-flight count and reservation given back, the estimate replaced by
# the tokens spent. ARGV[1] is the replica's member in every script that applies it.
_APPLY_DONE = """
local function done(k, id, correction, spent, release, keep, keep_in_flight)
  if redis.call('HINCRBY', KEYS[k + 4], ARGV[1], -1) < 0 then
    redis.call('HSET', KEYS[k + 4], ARGV[1], 0)
  end
  redis.call('EXPIRE', KEYS[k + 4], keep_in_flight)
  redis.call('ZADD', KEYS[k + 2], at(now), id .. ':' .. correction)
  redis.call('INCRBY', KEYS[k + 3], correction)
  for i = 1, 3 do redis.call('EXPIRE', KEYS[k + i], keep) end
  local rsv = KEYS[k + 6]
  if tonumber(release) > 0 and redis.call('HINCRBY', rsv, ARGV[1], -tonumber(release)) < 0 then
    redis.call('HSET', rsv, ARGV[1], 0)
  end
  if redis.call('EXISTS', KEYS[k + 5]) == 1 then
    redis.call('HINCRBY', KEYS[k + 5], 'spent', spent)
  end
end
local function apply_dones(k, a, keep, keep_in_flight)
  for i = 1, tonumber(ARGV[a]) do
    local b = a + 4 * (i - 1)
    done(k + 6 * (i - 1), ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], keep, keep_in_flight)
  end
end
"""

# KEYS: req, tok, sum, fl, replicas, quota, rsv, then six per pending done. ARGV: member,
# request id, estimate, rpm, tpm, max_concurrency (-1: none), window, live, keep,
# keep_in_flight, quota (-1: none), the tokens the key store says were spent (quota -
# balance), then the pending dones (a count, then entry id, correction, spent, release each):
# this replica's requests that ended since its last call ride on its next admission.
_ADMIT = (
    LUA_CLOCK
    + _APPLY_DONE
    + """
apply_dones(7, 13, ARGV[9], ARGV[10])
redis.call('ZADD', KEYS[5], at(now), ARGV[1])
local horizon = '(' .. at(now - tonumber(ARGV[7]))
local sum = tonumber(redis.call('GET', KEYS[3]) or '0')
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon)) do
  sum = sum - tonumber(string.match(m, ':(-?%d+)$'))
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
redis.call('SET', KEYS[3], string.format('%d', sum))
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[9]) end
local live = now - tonumber(ARGV[8])
-- The sum of a hash's counts by replica, over the replicas beating since ``live``; the counts
-- of the others (killed, or gone) are dropped.
local function live_sum(hash)
  local total, counts = 0, redis.call('HGETALL', hash)
  for i = 1, #counts, 2 do
    local seen = redis.call('ZSCORE', KEYS[5], counts[i])
    if seen and tonumber(seen) >= live then
      total = total + tonumber(counts[i + 1])
    else
      redis.call('HDEL', hash, counts[i])
    end
  end
  return total
end
local in_flight = live_sum(KEYS[4])
local quota, spent, reserved = tonumber(ARGV[11]), tonumber(ARGV[12]), 0
if quota >= 0 then
  -- The mirror counts for the quota it was made for; a new quota (a top-up, an edit) starts
  -- it again from the store. It never counts less than the store has charged.
  local mirror = redis.call('HMGET', KEYS[6], 'quota', 'spent')
  if mirror[1] and tonumber(mirror[1]) == quota then
    spent = math.max(spent, tonumber(mirror[2]))
  end
  redis.call('HSET', KEYS[6], 'quota', ARGV[11], 'spent', string.format('%d', spent))
  redis.call('EXPIRE', KEYS[6], ARGV[10])
  reserved = live_sum(KEYS[7])
else
  redis.call('DEL', KEYS[6])  -- no quota now: a quota given later starts from the store
end
local requests = redis.call('ZCARD', KEYS[1])
local estimate, rpm, tpm, most = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6])
if (quota >= 0 and quota - spent - reserved <= 0) or (most >= 0 and in_flight >= most)
    or (rpm >= 0 and requests >= rpm) or (tpm >= 0 and requests > 0 and sum + estimate > tpm) then
  local oldest = ''
  if requests > 0 then oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] end
  return {0, in_flight, requests, sum, oldest, at(now), string.format('%d', spent),
    string.format('%d', reserved)}
end
redis.call('ZADD', KEYS[1], at(now), ARGV[2])
redis.call('ZADD', KEYS[2], at(now), ARGV[2] .. ':' .. ARGV[3])
redis.call('INCRBY', KEYS[3], ARGV[3])
for i = 1, 2 do redis.call('EXPIRE', KEYS[i], ARGV[9]) end
redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
redis.call('EXPIRE', KEYS[4], ARGV[10])
if quota >= 0 then
  redis.call('HINCRBY', KEYS[7], ARGV[1], ARGV[3])
  redis.call('EXPIRE', KEYS[7], ARGV[10])
end
return {1}
"""
)

# KEYS: six per done. ARGV: member, keep, keep_in_flight, then the dones as in _ADMIT.
_DONE = LUA_CLOCK + _APPLY_DONE + "apply_dones(0, 4, ARGV[2], ARGV[3])\n"


_PARTS = ("req", "tok", "sum", "fl", "quota", "rsv")


def _keys(key_id: str) -> list[str]:
    # One hash tag per key: its keys would share a slot on a cluster.
    return [f"nobusy:key:{{{key_id}}}:{part}" for part in _PARTS]


def _limit(value: int | None) -> int:
    return -1 if value is None else value


class RedisKeyLimits:
    """The counters in Redis, so that a key's limits hold across all replicas together."""

    def __init__(
        self,
        url: str,
        replica: str,
        on_failure: Literal["local", "refuse"] = "local",
        replicas_hint: int = 1,
        fleet: Fleet | None = None,
    ) -> None:
        self.url, self.shown, self.replica = url, redact(url), replica
        self.on_failure = on_failure
        # Counts are per incarnation: a replica restarted under the same id starts from zero.
        self.member = f"{replica}:{secrets.token_hex(4)}"
        self.replicas = replicas_hint  # the replicas seen beating last, for the local share
        self.shared = True  # False while limits are local because Redis does not answer
        self.since = time.time()  # when ``shared`` last changed
        self.reason = ""  # why Redis was last found failing (its words, scrubbed)
        self.fleet = fleet or Fleet(replica)
        self._redis = connect(url)
        self._admit = Script(self._redis, _ADMIT)
        self._done = Script(self._redis, _DONE)
        self._beat = Script(self._redis, BEAT_SCRIPT)
        self._ids = itertools.count()
        self._local = KeyLimits()
        # Requests in flight by key, admitted through Redis and locally: ``done`` only names
        # the key, so it gives back a local one first.
        self._in_flight: Counter[str] = Counter()
        self._local_in_flight: Counter[str] = Counter()
        # Tokens this replica reserved in Redis for its requests in flight, by key.
        self._reserved: Counter[str] = Counter()
        self._unsynced: set[str] = set()  # keys whose in-flight count Redis may have wrong
        # Dones not yet sent: (key, entry id, correction, tokens spent, reservation released).
        self._pending: list[tuple[str, str, int, int, int]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Beat once (Redis unreachable: local limits from the start), then every ``BEAT``."""
        log.info("key limits shared through %s as replica %s", self.shown, self.replica)
        await self.beat()
        self._beating = asyncio.create_task(self._beat_forever(), name="nobusy-state-beat")

    async def admit(self, key: Key, alias: str, estimate: int) -> None:
        check_key(key, alias)  # the store's balance spent: refused without a round trip
        if not limited(key) and key.quota_tokens is None:
            return
        if self.shared or self.on_failure == "refuse":
            try:
                await self._admit_shared(key, estimate)
            except ERRORS as exc:
                self._lost(exc)
                if self.on_failure == "refuse":
                    raise StorageUnavailable(
                        "Shared rate limits are unavailable (the state store does not "
                        "answer); retry shortly."
                    ) from None
            else:
                self._regained()
                return
        await self._local.admit(self._share(key), alias, estimate)
        self._local_in_flight[key.id] += 1

    async def _admit_shared(self, key: Key, estimate: int) -> None:
        limits = (_limit(key.rpm), _limit(key.tpm), _limit(key.max_concurrency))
        args: list[str | int] = [self.member, self._id(), estimate, *limits, int(WINDOW), LIVE]
        quota = _limit(key.quota_tokens)
        spent = 0 if key.quota_tokens is None else key.quota_tokens - (key.balance or 0)
        keys = _keys(key.id)
        done_keys, done_args, done_ids = self._take_pending()
        try:
            answer = await self._admit(
                keys=[*keys[:4], REPLICAS, *keys[4:], *done_keys],
                args=[*args, KEEP, KEEP_IN_FLIGHT, quota, spent, *done_args],
            )
        except BaseException:
            self._delivered(done_ids, False)
            raise
        self._delivered(done_ids, True)
        if answer[0] == 1:
            self._in_flight[key.id] += 1
            if quota >= 0:
                self._reserved[key.id] += estimate
            return
        _, in_flight, requests, tokens, oldest, now, spent_now, reserved_now = answer
        reserved = int(reserved_now)
        if quota >= 0 and quota - int(spent_now) - reserved <= 0:
            held = f", {reserved} of them reserved by requests in flight" if reserved else ""
            raise QuotaExhausted(
                f"Key '{key.name}' has used its token quota ({key.quota_tokens}{held}); "
                "top it up to continue."
            )
        first = float(oldest) if oldest else None
        check_counts(key, int(in_flight), int(requests), int(tokens), first, estimate, float(now))
        # Unreachable while the script and check_counts agree; never admit on a disagreement.
        raise RateLimited(f"Key '{key.name}' reached one of its limits.", retry_after=1)

    def done(self, key_id: str, estimate: int, actual: int) -> None:
        if self._local_in_flight[key_id] > 0:
            self._local_in_flight[key_id] -= 1
            self._local.done(key_id, estimate, actual)
            return
        if self._in_flight[key_id] <= 0:
            return  # a key without limits: nothing was counted
        self._in_flight[key_id] -= 1
        # A key given a quota while this request ran reserved nothing for it.
        release = min(estimate, self._reserved[key_id])
        self._reserved[key_id] -= release
        # No call of its own: it rides on this replica's next admission (one round trip for
        # both, and the slot is free before that admission is decided), or on a call of its
        # own _COALESCE later when no admission comes.
        self._pending.append((key_id, self._id(), actual - estimate, actual, release))
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_soon())

    def _take_pending(self) -> tuple[list[str], list[str | int], list[str]]:
        """The pending dones as extra KEYS and ARGV of a script (``_APPLY_DONE``), and the
        keys they are for."""
        pending, self._pending = self._pending, []
        keys: list[str] = []
        args: list[str | int] = [len(pending)]
        for key_id, entry, correction, actual, release in pending:
            keys += _keys(key_id)
            args += [entry, correction, actual, release]
        return keys, args, [key_id for key_id, *_ in pending]

    def _delivered(self, key_ids: list[str], ok: bool) -> None:
        """A call carrying dones returned (``ok``) or failed: on a failure their token
        corrections are lost (the estimate stands, as in SharedKeyLimits); the in-flight
        counts and reservations are written back exactly by the next beat that succeeds, and
        the spending reaches the mirror from the key store's balance."""
        if not ok:
            self._unsynced.update(key_ids)

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(_COALESCE)
            while self._pending:
                keys, args, key_ids = self._take_pending()
                try:
                    await self._done(keys=keys, args=[self.member, KEEP, KEEP_IN_FLIGHT, *args])
                except ERRORS as exc:
                    self._delivered(key_ids, False)
                    self._lost(exc)
                else:
                    self._delivered(key_ids, True)
        finally:
            self._flushing = None

    async def beat(self) -> None:
        """Say this replica is alive and count the replicas; the first success after a
        failure returns to shared limits and writes back in-flight counts Redis may have
        wrong (lost in a restart, or not given back while it was away)."""
        try:
            answer = await self._beat(
                keys=[REPLICAS, FLEET], args=[self.member, LIVE, self.fleet.published()]
            )
            self.replicas = max(1, self.fleet.read(answer, self.member))
        except ERRORS as exc:
            self._lost(exc)
            return
        self._regained()
        if self._unsynced:
            try:
                await self._sync()
            except ERRORS as exc:
                self._lost(exc)

    async def _sync(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        keys = sorted(self._unsynced)
        for key_id in keys:
            _, _, _, fl, _, rsv = _keys(key_id)
            pipe.hset(fl, self.member, max(0, self._in_flight[key_id]))
            pipe.expire(fl, KEEP_IN_FLIGHT)
            pipe.hset(rsv, self.member, max(0, self._reserved[key_id]))
            pipe.expire(rsv, KEEP_IN_FLIGHT)
        await bounded(pipe.execute())
        self._unsynced.difference_update(keys)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(BEAT)
            await self.beat()

    def health(self) -> Health:
        """Shared, or degraded to local limits (``refuse``: down), and since when."""
        if self.shared:
            detail = f"key limits shared by {self.replicas} replica(s)"
            return Health("redis", self.shown, "ok", detail, self.since)
        if self.on_failure == "refuse":
            detail = f"does not answer ({self.reason}): refusing keys with limits"
            return Health("redis", self.shown, "down", detail, self.since)
        detail = (
            f"does not answer ({self.reason}): key limits local, each divided by "
            f"{self.replicas} replica(s)"
        )
        return Health("redis", self.shown, "degraded", detail, self.since)

    def _lost(self, exc: BaseException) -> None:
        """Redis failed: said once, until it answers again."""
        if not self.shared:
            return
        self.shared, self.since = False, time.time()
        self.reason = reason = scrub(str(exc) or type(exc).__name__, self.url)
        if self.on_failure == "refuse":
            log.error("Redis at %s does not answer (%s): refusing limited keys", self.shown, reason)
            return
        log.warning(
            "Redis at %s does not answer (%s): key limits are local now, each limit divided "
            "by %d replica(s), until it answers again",
            self.shown,
            reason,
            self.replicas,
        )

    def _regained(self) -> None:
        if not self.shared:
            self.shared, self.since = True, time.time()
            self._unsynced.update(k for k, n in self._in_flight.items() if n > 0)
            log.warning("Redis at %s answers again: key limits are shared again", self.shown)

    def _share(self, key: Key) -> Key:
        """The key with each limit divided among the replicas (at least 1)."""
        n = self.replicas

        def part(value: int | None) -> int | None:
            return None if value is None else max(1, value // n)

        return dataclasses.replace(
            key, rpm=part(key.rpm), tpm=part(key.tpm), max_concurrency=part(key.max_concurrency)
        )

    def _id(self) -> str:
        return f"{self.member}:{next(self._ids)}"

    async def flush(self) -> None:
        """Send the dones still pending now, and wait (two seconds at most) for them."""
        if self._pending and self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_soon())
        if self._flushing is not None:
            await asyncio.wait({self._flushing}, timeout=2)

    def close(self) -> None:
        """Nothing here: ``aclose`` closes the connection (``running`` awaits it)."""

    async def aclose(self) -> None:
        """Finish pending reconciliations, leave the replicas (so this one's in-flight counts
        stop counting at once), close the connections."""
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        await self.flush()
        with contextlib.suppress(*ERRORS):
            await bounded(self._redis.zrem(REPLICAS, self.member))
            await bounded(self._redis.hdel(FLEET, self.member))
        await self._redis.aclose()
