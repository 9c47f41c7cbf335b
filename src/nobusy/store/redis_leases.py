"""Upstream slots as leases in Redis, the learned limit they are counted against, and the
reports the replicas exchange about their keys and budgets.

The ``FleetLeases`` backend chosen when ``state`` names a Redis. Per upstream, ``lease`` (a
hash: slots held by each replica incarnation) and ``limit`` (the adaptive limit and its epoch,
one value for the fleet). One Lua script takes a slot atomically in one round trip: it first
applies what this replica owes the upstream since its last call (slots given back, changes
of the limit from ``admission.adaptive``), then counts the slots of the replicas alive and
takes one only while ``held + 1 + reserve <= min(ceiling, limit)``. ``reserve`` is what
``admission.fairness`` keeps free for light keys when the taker is a heavy one: the light
keys' recent peak (sent by the replica) less the slots they hold now across the fleet, counted
exactly in the script (the lease hash counts slots by key too), not as last reported.

An upstream with ``rpm`` or ``tpm`` also has ``req`` (its attempts by time), ``tok`` (their
tokens by time, each member ending in its amount) and ``sum``, the window of
``admission.rates`` on Redis's clock: the same take admits the attempt only while the window
has room, and counts it in. Corrections by the usage reported ride on the next call, like
give-backs; a window found full makes this replica skip the round trip for a moment.

A replica is alive while it syncs (every ``SYNC`` seconds; it says so in ``holders``): one
killed with slots held loses them ``ttl`` seconds after its last sync, one that closes gives
them back at once. Giving back never waits: it rides on the next take of the same upstream, or
on a call of its own 5 ms later if none comes. The sync also carries this replica's report (its
keys' demand and waiting, its budgets, ``routing.reports``) and returns the others'.

When Redis fails, slots are counted in this process, ``min(ceiling, limit) / replicas`` each
(and rpm and tpm likewise, in a window of this process's)
(never refused: an upstream's slot is not a key's limit, and the upstreams themselves still
refuse what they cannot take), said once in the log; the first sync that succeeds writes back
this replica's exact counts and shares again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

from nobusy.admission.limits import WINDOW
from nobusy.admission.rates import Rates, UpstreamRates
from nobusy.store.redis_client import ERRORS, LUA_CLOCK, Script, bounded, connect, redact, scrub

__all__ = ["HOLDERS", "SYNC", "RedisLeases"]

SYNC = 0.2  # seconds between a replica's syncs: heartbeat, and the reports of its keys
SPARES = 2  # spare slots a replica holds at most (see ``RedisLeases.take``)
_COALESCE = 0.005  # seconds a give-back waits for a take to ride on (then a call of its own)
_RECHECK = 0.5  # seconds a full window is believed full before asking Redis again
_KEEP = int(2 * WINDOW)  # seconds an upstream's window outlives its last write
# Seconds a replica's first waiter's place stands in the fleet's order without being told
# again: a replica with waiters asks every _PUMP_EVERY (admission/capacity.py) while it has
# room, and a replica whose last waiter left tells nobody.
_FRESH = 0.1
HOLDERS = "nobusy:leaseholders"
FLEET = "nobusy:leases:reports"

log = logging.getLogger("nobusy.state")

# KEYS: lease, holders, limit, req, tok, sum, and the places of the key's first waiters.
# ARGV: member, ceiling, initial, take (1/0), peak, ttl, who, then the slots given back (a
# count, then key and slots for each), the light keys (a count, then each), the window's rpm,
# tpm (-1: none), the take's estimated tokens, an id for this call's entries, the tokens
# corrected since the last call, the window's seconds and how long its keys outlive a write,
# the place of this replica's first waiter of the key and of the next one once this take
# succeeds ('': none, or not told), how long a place told stands without being told again,
# the tokens the window must have room for (the estimate, or less: ``Capacity._need``), the
# spare slots wanted, and the limit's changes as triples (kind, a, b). Returns the slots
# taken (0, or 1 plus the spares), held, epoch, limit, then seconds until a full window has
# room (0: not full), the requests and tokens in the window, and whether no other replica's
# first waiter of the key comes before this one's (1/0). The lease hash holds, per replica
# incarnation, its total (field: member) and its slots by key (member NUL key). The floor
# (1) and backoff (0.9) of a drop are AIMDLimit's (admission/adaptive.py).
_TAKE = (
    LUA_CLOCK
    + """
local member, who = ARGV[1], ARGV[7]
redis.call('ZADD', KEYS[2], at(now), member)
local function add(field, n)
  if redis.call('HINCRBY', KEYS[1], field, n) <= 0 then redis.call('HDEL', KEYS[1], field) end
end
local i = 9
for _ = 1, tonumber(ARGV[8]) do
  local n = tonumber(ARGV[i + 1])
  add(member, -n)
  if ARGV[i] ~= '' then add(member .. '\\0' .. ARGV[i], -n) end
  i = i + 2
end
local light = {}
for _ = 1, tonumber(ARGV[i]) do
  light[ARGV[i + 1]] = true
  i = i + 1
end
i = i + 1
local rpm, tpm, estimate = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
local rid, correction = ARGV[i + 3], tonumber(ARGV[i + 4])
local window, keep = tonumber(ARGV[i + 5]), ARGV[i + 6]
local place, after, fresh = ARGV[i + 7], ARGV[i + 8], now - tonumber(ARGV[i + 9])
local need, spares = tonumber(ARGV[i + 10]), tonumber(ARGV[i + 11])
i = i + 12
-- A key's requests are served in the order they came, across the fleet: each replica's first
-- waiter of the key (KEYS[7], the key's: member -> place, when told), as told lately (a
-- replica waiting asks every few tens of ms). Keys among themselves take turns by fairness.
local first = 1
if place ~= '' then
  local heads = redis.call('HGETALL', KEYS[7])
  for j = 1, #heads, 2 do
    if heads[j] ~= member then
      local theirs, told = string.match(heads[j + 1], '^(.-),(.*)$')
      if tonumber(told) < fresh then
        redis.call('HDEL', KEYS[7], heads[j])
      elseif tonumber(theirs) < tonumber(place) then
        first = 0
      end
    end
  end
end
local rated, requests, sum = rpm >= 0 or tpm >= 0, 0, 0
if rated then
  -- The window of admission.rates (and of a key's limits, store/redis_limits.py).
  if correction ~= 0 then
    redis.call('ZADD', KEYS[5], at(now), rid .. 'c:' .. correction)
    redis.call('INCRBY', KEYS[6], correction)
  end
  local horizon = '(' .. at(now - window)
  sum = tonumber(redis.call('GET', KEYS[6]) or '0')
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', horizon)) do
    sum = sum - tonumber(string.match(m, ':(-?%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', horizon)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', horizon)
  redis.call('SET', KEYS[6], string.format('%d', sum), 'EX', keep)
  requests = redis.call('ZCARD', KEYS[4])
end
local ceiling = tonumber(ARGV[2])
local limit = tonumber(redis.call('HGET', KEYS[3], 'limit') or ARGV[3])
local epoch = tonumber(redis.call('HGET', KEYS[3], 'epoch') or '0')
for j = i, #ARGV, 3 do
  local kind, a, b = ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2])
  if kind == 'add' then
    limit = limit + a
  elseif kind == 'drop' and b >= epoch then
    epoch = epoch + 1
    limit = math.max(1, math.min(limit * 0.9, a - 1))
  elseif kind == 'scale' then
    limit = math.max(1, limit * a)
  end
end
limit = math.max(1, math.min(limit, ceiling))
redis.call('HSET', KEYS[3], 'limit', string.format('%.6f', limit), 'epoch', epoch)
local live, alive, held, holding = now - tonumber(ARGV[6]), {}, 0, 0
local counts = redis.call('HGETALL', KEYS[1])
for j = 1, #counts, 2 do
  local field = counts[j]
  local owner, key = string.match(field, '^(.-)%z(.*)$')
  owner = owner or field
  if alive[owner] == nil then
    local seen = redis.call('ZSCORE', KEYS[2], owner)
    alive[owner] = seen ~= false and tonumber(seen) >= live
  end
  if not alive[owner] then
    redis.call('HDEL', KEYS[1], field)
  elseif key == nil then
    held = held + tonumber(counts[j + 1])
  elseif light[key] then
    holding = holding + tonumber(counts[j + 1])
  end
end
local ok, rest = 0, 0
local reserve = math.max(0, tonumber(ARGV[5]) - holding)
if rated and ((rpm >= 0 and requests >= rpm)
    or (tpm >= 0 and requests > 0 and sum + need > tpm)) then
  -- No room in the window (a first request always fits, as for a key's tpm): when the
  -- oldest request in it leaves, there may be.
  local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')[2]
  rest = math.max(0, tonumber(oldest) + window - now)
elseif ARGV[4] == '1' and first == 1 and held + 1 + reserve <= math.floor(limit) then
  -- Spares: slots held by the replica, not yet in use, while the fleet holds under a
  -- quarter of the limit (none under a limit of 16: there a spare would be a slot missed).
  local n = 1
  while n <= spares and limit >= 16 and held + n + 1 <= math.floor(limit / 4) do n = n + 1 end
  redis.call('HINCRBY', KEYS[1], member, n)
  if who ~= '' then redis.call('HINCRBY', KEYS[1], member .. '\\0' .. who, 1) end
  held, ok = held + n, n
  if rated then
    redis.call('ZADD', KEYS[4], at(now), rid)
    redis.call('ZADD', KEYS[5], at(now), rid .. ':' .. estimate)
    redis.call('INCRBY', KEYS[6], estimate)
    for k = 4, 6 do redis.call('EXPIRE', KEYS[k], keep) end
    requests, sum = requests + 1, sum + estimate
  end
end
if place ~= '' then
  local head = place
  if ok == 1 then head = after end
  if head == '' then
    redis.call('HDEL', KEYS[7], member)
  else
    redis.call('HSET', KEYS[7], member, head .. ',' .. at(now))
    redis.call('EXPIRE', KEYS[7], keep)
  end
end
return {ok, held, epoch, string.format('%.6f', limit), at(rest), requests, sum, first}
"""
)

# KEYS: lease. ARGV: member, then field and count pairs. Replaces every field of member's.
_RESET = """
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if field == ARGV[1] or string.sub(field, 1, #ARGV[1] + 1) == ARGV[1] .. '\\0' then
    redis.call('HDEL', KEYS[1], field)
  end
end
for i = 2, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > 0 then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
"""

# KEYS: holders, fleet. ARGV: member, ttl, report. Returns the live holders' count, then the
# other live replicas' reports as (member, report) pairs.
_SYNC = (
    LUA_CLOCK
    + """
redis.call('ZADD', KEYS[1], at(now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. at(now - tonumber(ARGV[2])))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local out = {redis.call('ZCARD', KEYS[1])}
local reports = redis.call('HGETALL', KEYS[2])
for i = 1, #reports, 2 do
  if not redis.call('ZSCORE', KEYS[1], reports[i]) then
    redis.call('HDEL', KEYS[2], reports[i])
  elseif reports[i] ~= ARGV[1] then
    table.insert(out, reports[i])
    table.insert(out, reports[i + 1])
  end
end
return out
"""
)


def _keys(upstream: str, who: str = "") -> list[str]:
    # One hash tag per upstream: its keys would share a slot on a cluster.
    up = f"nobusy:up:{{{upstream}}}"
    return [
        f"{up}:lease",
        HOLDERS,
        f"{up}:limit",
        f"{up}:req",
        f"{up}:tok",
        f"{up}:sum",
        f"{up}:heads:{who}",
    ]


class RedisLeases:
    """Slots on upstreams and their learned limits, shared by every replica through Redis."""

    def __init__(
        self,
        url: str,
        replica: str,
        ceilings: Mapping[str, int],
        initial: Mapping[str, int],
        ttl: float = 10.0,
        replicas_hint: int = 1,
        rates: Mapping[str, Rates] | None = None,
    ) -> None:
        self.url, self.shown, self.replica = url, redact(url), replica
        self.ceilings = dict(ceilings)
        self.initial = {name: min(ceilings[name], initial[name]) for name in ceilings}
        self.ttl = ttl
        # Leases are per incarnation: a replica restarted under the same id holds nothing.
        self.member = f"{replica}:{secrets.token_hex(4)}"
        self.replicas = replicas_hint  # replicas holding leases at the last sync
        self.shared = True  # False while slots are counted here because Redis does not answer
        self.mine: Counter[str] = Counter()  # slots this replica holds, however taken
        self.mine_by: Counter[tuple[str, str]] = Counter()  # ... by (upstream, key)
        # The fleet as last seen: slots held by all, the shared limit and its epoch.
        self.fleet: dict[str, int] = dict.fromkeys(ceilings, 0)
        self.limit: dict[str, float] = {name: float(v) for name, v in self.initial.items()}
        self.epoch: dict[str, int] = dict.fromkeys(ceilings, 0)
        self.reports: dict[str, Any] = {}  # the other live replicas' reports, by member
        self.report: Callable[[], Any] = dict  # what this replica tells the others
        self.learn: Callable[[list[Any]], None] = lambda _: None  # told after each sync
        # Slots given back, not yet told to Redis: upstream -> key -> slots.
        self._owed: dict[str, Counter[str]] = {}
        self._changes: dict[str, list[str | float]] = {}  # limit changes, not yet told
        # The upstreams' rpm and tpm: decided in Redis; counted here while it does not answer.
        self.rates = UpstreamRates(rates or {})
        self.window: dict[str, tuple[int, int]] = {}  # requests and tokens in it, last seen
        self._corrections: Counter[str] = Counter()  # tokens to add to a window, not yet told
        self._full_until: dict[str, float] = {}  # when a window seen full may have room
        self._ids = itertools.count()
        self._asked: dict[str, float] = {}  # when Redis was last asked about an upstream
        self._first: dict[str, bool] = {}  # this replica's first waiter was the fleet's
        # Spare slots: taken in Redis with a take while the fleet holds under half the limit,
        # handed out here without a round trip (counted there for this replica, not for a
        # key), given back as soon as anyone waits.
        self.spare: Counter[str] = Counter()
        self._spent: Counter[tuple[str, str]] = Counter()  # (upstream, key): spares in use
        self.waiting = False  # other replicas have requests waiting, as last reported
        self._redis = connect(url)
        self._take = Script(self._redis, _TAKE)
        self._sync = Script(self._redis, _SYNC)
        self._reset = Script(self._redis, _RESET)
        self._flushing: asyncio.Task[None] | None = None
        self._syncing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Sync once (Redis unreachable: local slots from the start), then every ``SYNC``."""
        log.info("upstream slots shared through %s as replica %s", self.shown, self.replica)
        await self.sync()
        self._syncing = asyncio.create_task(self._sync_forever(), name="nobusy-leases-sync")

    # --- slots -----------------------------------------------------------------------------

    async def take(
        self,
        upstream: str,
        who: str = "",
        peak: int = 0,
        light: Collection[str] = (),
        tokens: int = 0,
        turn: tuple[float, float | None] | None = None,
        need: int | None = None,
    ) -> bool:
        """One more slot on ``upstream`` for ``who`` if all replicas together hold fewer than
        its limit, less ``peak`` slots for the ``light`` keys (less what they hold now), its
        rpm/tpm window has room for ``need`` tokens (``tokens``, the estimate counted in it,
        by default), and (``turn``: the place of this replica's first waiter, and of the next
        one) no other replica's first waiter comes sooner; also tells Redis what this replica
        owes it. One round trip."""
        if self.shared:
            if self.spare[upstream] > 0 and self._quiet(upstream, peak):
                self.spare[upstream] -= 1
                self._spent[upstream, who] += 1
                self._count(upstream, who, 1)
                return True
            try:
                taken = await self._call(upstream, True, who, peak, light, tokens, turn, need)
            except ERRORS as exc:
                self._lost(exc)
            else:
                if taken:
                    self._count(upstream, who, 1)
                return taken
        share = max(1, int(min(self.ceilings[upstream], self.limit[upstream])) // self.replicas)
        reserve = max(0, peak - sum(self.mine_by[upstream, k] for k in light))
        if self.mine[upstream] + reserve >= share:
            return False
        if not self.rates.admit(upstream, tokens, self.replicas):
            return False
        self._count(upstream, who, 1)
        self.fleet[upstream] = self.mine[upstream]
        return True

    def give_back(self, upstream: str, who: str = "") -> None:
        """Free one of this replica's slots; Redis hears of it without the caller waiting."""
        if self.mine[upstream] <= 0:
            return
        self._count(upstream, who, -1)
        if not self.shared:
            return
        if self._spent[upstream, who] > 0:
            # A spare, counted in Redis for this replica only, not for ``who``.
            self._spent[upstream, who] -= 1
            if self._spent[upstream, who] <= 0:
                del self._spent[upstream, who]
            if self._quiet(upstream, 0) and self.spare[upstream] < SPARES:
                self.spare[upstream] += 1
                return
            who = ""
        self._owed.setdefault(upstream, Counter())[who] += 1
        self._flush_soon()

    def _quiet(self, upstream: str, peak: int) -> bool:
        """Whether a take on ``upstream`` may be a spare: no window to count it in, no reserve
        to leave, nobody waiting in the fleet (as last reported)."""
        return upstream not in self.rates.ceilings and not peak and not self.waiting

    def _return_spares(self) -> None:
        """Give every spare back (the fleet has waiters now, or got busy)."""
        for upstream, n in self.spare.items():
            if n > 0:
                self._owed.setdefault(upstream, Counter())[""] += n
        if self.spare:
            self.spare.clear()
            self._flush_soon()

    def _count(self, upstream: str, who: str, n: int) -> None:
        self.mine[upstream] += n
        if who:
            self.mine_by[upstream, who] += n
            if self.mine_by[upstream, who] <= 0:
                del self.mine_by[upstream, who]

    def adjust(self, upstream: str, kind: str, a: float, b: float = 0.0) -> None:
        """A change of the shared limit (``add`` a; ``drop`` to a - 1 if epoch b is current;
        ``scale`` by a), applied in Redis with the next call about ``upstream``."""
        if self.shared:
            self._changes.setdefault(upstream, []).extend((kind, a, b))
            self._flush_soon()

    def correct(self, upstream: str, tokens: int) -> None:
        """Add ``tokens`` (an attempt's usage less its estimate) to ``upstream``'s window: in
        Redis with the next call about it, here while Redis does not answer."""
        if upstream not in self.rates.ceilings or not tokens:
            return
        if not self.shared:
            self.rates.done(upstream, 0, tokens)
            return
        self._corrections[upstream] += tokens
        self._flush_soon()

    def resting(self, upstream: str) -> float:
        """Seconds before a take on ``upstream`` is worth a round trip (its window was full
        lately; at most ``_RECHECK``, as another replica's correction may free it)."""
        until = self._full_until.get(upstream)
        if until is None or not self.shared:
            return 0.0
        return max(0.0, min(until, self._asked.get(upstream, 0.0) + _RECHECK) - time.monotonic())

    def window_wait(self, upstream: str) -> float:
        """Seconds until ``upstream``'s window, full when last seen, has room again."""
        if not self.shared:
            return self.rates.wait(upstream, self.replicas)
        return max(0.0, self._full_until.get(upstream, 0.0) - time.monotonic())

    def first(self, upstream: str) -> bool:
        """Whether this replica's first waiter of a key came first in the fleet at the last
        take."""
        return self._first.get(upstream, True)

    def held(self, upstream: str) -> int:
        """Slots on ``upstream`` held by every replica together, as last seen (this replica's
        spares left out: nothing runs on them)."""
        return self.fleet.get(upstream, 0) - self.spare[upstream]

    async def _call(
        self,
        upstream: str,
        take: bool,
        who: str = "",
        peak: int = 0,
        light: Collection[str] = (),
        tokens: int = 0,
        turn: tuple[float, float | None] | None = None,
        need: int | None = None,
    ) -> bool:
        owed, changes = self._owed.pop(upstream, Counter()), self._changes.pop(upstream, [])
        correction = self._corrections.pop(upstream, 0)
        args: list[str | int | float] = [self.member, self.ceilings[upstream]]
        args += [self.initial[upstream], int(take), peak, self.ttl, who, len(owed)]
        for key, n in owed.items():
            args += [key, n]
        rpm, tpm = self.rates.ceilings.get(upstream, (None, None))
        rid = f"{self.member}:{next(self._ids)}"
        args += [len(light), *light, _limit(rpm), _limit(tpm), tokens, rid, correction]
        args += [int(WINDOW), _KEEP, *_places(turn), _FRESH, tokens if need is None else need]
        quiet = take and self._quiet(upstream, peak) and self.spare[upstream] < SPARES
        args += [SPARES - self.spare[upstream] if quiet else 0, *changes]
        # On an error, whether Redis applied what was owed is unknown: the sync after it
        # answers again writes back this replica's exact counts (the limit's changes and the
        # window's corrections are lost).
        self._asked[upstream] = time.monotonic()
        answer = await self._take(keys=_keys(upstream, who), args=args)
        ok, held, epoch, limit, rest, requests, tokens_now, first = answer
        if turn is not None:
            self._first[upstream] = bool(first)
        self.fleet[upstream], self.epoch[upstream] = int(held), int(epoch)
        self.limit[upstream] = float(limit)
        if upstream in self.rates.ceilings:
            self.window[upstream] = (int(requests), int(tokens_now))
            if float(rest) > 0:
                self._full_until[upstream] = time.monotonic() + float(rest)
            else:
                self._full_until.pop(upstream, None)
        if int(ok) > 1:
            self.spare[upstream] += int(ok) - 1
        elif self.spare[upstream] and (
            self.limit[upstream] < 16 or self.fleet[upstream] > self.limit[upstream] / 4
        ):
            self._return_spares()  # the fleet got busy: this replica's spares go back
        return bool(int(ok))

    def _flush_soon(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Tell Redis what is owed for every upstream, until nothing is: after a moment, in
        which the next take (under load, the usual case) carries it for free."""
        await asyncio.sleep(_COALESCE)
        while self.shared and (self._owed or self._changes or self._corrections):
            upstream = next(iter(self._owed or self._changes or self._corrections))
            try:
                await self._call(upstream, take=False)
            except ERRORS as exc:
                self._lost(exc)

    # --- the fleet -------------------------------------------------------------------------

    async def sync(self) -> None:
        """Say this replica is alive, send its report, read the others'. The first success
        after a failure writes back this replica's exact slot counts and shares again."""
        try:
            if not self.shared:
                await self._write_back()
            report = json.dumps(self.report(), separators=(",", ":"))
            answer = await self._sync(keys=[HOLDERS, FLEET], args=[self.member, self.ttl, report])
        except ERRORS as exc:
            self._lost(exc)
            return
        self.replicas = max(1, int(answer[0]))
        pairs = answer[1:]
        self.reports = {
            _text(pairs[i]): json.loads(pairs[i + 1]) for i in range(0, len(pairs) - 1, 2)
        }
        self.learn(list(self.reports.values()))
        self.waiting = any(
            entry[3]
            for one in self.reports.values()
            if isinstance(one, dict)
            for entry in one.get("keys", {}).values()
            if isinstance(entry, list) and len(entry) > 3
        )
        if self.waiting:
            self._return_spares()
        self._regained()

    async def _write_back(self) -> None:
        for upstream in self.ceilings:
            await self._reset(keys=_keys(upstream)[:1], args=self._fields(upstream))
        self._owed.clear()
        self._changes.clear()
        self._corrections.clear()

    def _fields(self, upstream: str) -> list[str | int]:
        """This replica's fields in the lease hash of ``upstream``, and their counts."""
        fields: list[str | int] = [self.member, self.member, self.mine[upstream]]
        for (name, key), n in self.mine_by.items():
            if name == upstream:
                fields += [f"{self.member}\0{key}", n]
        return fields

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC)
            await self.sync()

    def _lost(self, exc: BaseException) -> None:
        """Redis failed: said once, until it answers again."""
        if not self.shared:
            return
        self.shared = False
        self.spare.clear()  # written back as not held, with the exact counts
        self._spent.clear()
        self._owed.clear()
        self._changes.clear()
        self._corrections.clear()
        reason = scrub(str(exc) or type(exc).__name__, self.url)
        log.warning(
            "Redis at %s does not answer (%s): upstream slots are counted here now, each "
            "limit divided by %d replica(s), until it answers again",
            self.shown,
            reason,
            self.replicas,
        )

    def _regained(self) -> None:
        if not self.shared:
            self.shared = True
            log.warning("Redis at %s answers again: upstream slots are shared again", self.shown)

    def close(self) -> None:
        """Nothing here: ``aclose`` gives the slots back and closes the connection."""

    async def aclose(self) -> None:
        """Stop syncing, tell Redis what is owed, give back every slot this replica holds and
        leave the holders (the others may take them at once), close the connection."""
        for task in (self._syncing, self._flushing):
            if task is not None and not task.done():
                if task is self._syncing:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, *ERRORS):
                    await task
        if self.shared:
            with contextlib.suppress(*ERRORS):
                for upstream in self.ceilings:
                    await self._reset(keys=_keys(upstream)[:1], args=[self.member])
                await bounded(self._redis.zrem(HOLDERS, self.member))
                await bounded(self._redis.hdel(FLEET, self.member))
        await self._redis.aclose()


def _places(turn: tuple[float, float | None] | None) -> list[str]:
    if turn is None:
        return ["", ""]
    place, after = turn
    return [repr(place), "" if after is None else repr(after)]


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
