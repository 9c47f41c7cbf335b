"""Money holds in Redis when ``state`` names one: a hold is one Lua script, one round trip.

Per budget (a key's, a group's) Redis keeps a mirror, ``nobusy:money:{ID}``: the period it
counts (``since``), what was spent in it (``spent``) and the holds of requests in flight
(``h:<id>`` = micro-units and expiry). The script sweeps the budget's expired holds, checks
spent + held < budget on the key's and the group's mirror, and only when both have room adds
the hold to both. The mirror starts from the key database's spend (the key's copy, the groups
read once a second) and never counts less than it; a new period starts it again.

A settlement moves the hold to ``spent`` in the mirror (one more script, in a task) and writes
the cost to the key database as ``MoneyHolds.settle`` does (its row there does not exist, so
only the spend moves): the durable spend is the database's, the mirror only decides. While
Redis does not answer, holds go to the key database itself (as without ``state``), which is
exact too, only a round trip to it; ``on_state_failure: refuse`` answers 503 instead.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Literal

from nobusy.errors import StorageUnavailable
from nobusy.keys import Key
from nobusy.money.budgets import Budget, refusal, spent
from nobusy.store.money_holds import Hold, MoneyHolds
from nobusy.store.redis_client import ERRORS, Script, connect, redact, scrub
from nobusy.store.sqlite import parse_timestamp, timestamp

__all__ = ["RedisMoneyHolds"]

log = logging.getLogger("nobusy.state")

_GROUPS_EVERY = 1.0  # seconds a replica's copy of the groups' budgets is believed

# KEYS: one mirror per budget. ARGV: now, hold id, micros, expiry, then per budget: its budget
# (-1: none), the start of its period, what the key database says it spent in it.
_RESERVE = """
local now, hold, micros, expires = tonumber(ARGV[1]), 'h:' .. ARGV[2], ARGV[3], ARGV[4]
local found = {}
for i, mirror in ipairs(KEYS) do
  local a = 5 + 3 * (i - 1)
  local budget, since, stored = tonumber(ARGV[a]), ARGV[a + 1], tonumber(ARGV[a + 2])
  local spent = stored
  if redis.call('HGET', mirror, 'since') == since then
    spent = math.max(stored, tonumber(redis.call('HGET', mirror, 'spent') or '0'))
  end
  local held, fields = 0, redis.call('HGETALL', mirror)
  for f = 1, #fields, 2 do
    if string.sub(fields[f], 1, 2) == 'h:' then
      local amount, expiry = string.match(fields[f + 1], '^(%d+):(.+)$')
      if tonumber(expiry) < now then
        redis.call('HDEL', mirror, fields[f])
      else
        held = held + tonumber(amount)
      end
    end
  end
  if budget >= 0 and spent + held >= budget then
    return {0, i, spent, held}
  end
  found[i] = {spent, held, since}
end
local out = {1}
for i, mirror in ipairs(KEYS) do
  redis.call('HSET', mirror, 'since', found[i][3], 'spent', string.format('%d', found[i][1]),
    hold, micros .. ':' .. expires)
  redis.call('EXPIRE', mirror, 86400)
  table.insert(out, found[i][1])
  table.insert(out, found[i][2])
end
return out
"""
# KEYS: the hold's mirrors. ARGV: hold id, cost, then each mirror's period start.
_SETTLE = """
for i, mirror in ipairs(KEYS) do
  redis.call('HDEL', mirror, 'h:' .. ARGV[1])
  if redis.call('HGET', mirror, 'since') == ARGV[2 + i] then
    redis.call('HINCRBY', mirror, 'spent', ARGV[2])
  end
end
return 1
"""


def _mirror(owner_id: str) -> str:
    return f"nobusy:money:{{{owner_id}}}"


class RedisMoneyHolds:
    """Holds decided in Redis, spend kept in the key database (``store``)."""

    def __init__(
        self,
        url: str,
        store: MoneyHolds,
        on_failure: Literal["local", "refuse"] = "local",
    ) -> None:
        self.url, self.shown, self.store, self.on_failure = url, redact(url), store, on_failure
        self.currency, self.ttl = store.currency, store.ttl
        self._redis = connect(url)
        self._reserve = Script(self._redis, _RESERVE)
        self._settle = Script(self._redis, _SETTLE)
        self._groups: dict[str, tuple[str, int | None, str | None, int]] = {}
        self._groups_at = -_GROUPS_EVERY
        self._groups_read = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._down = False

    async def reserve(self, key: Key, micros: int) -> Hold:
        """Hold ``micros`` against the key's and its group's budgets in Redis (in the key
        database while Redis does not answer); BudgetExhausted naming the budget."""
        now, since = self.store._periods()
        owners: list[tuple[Literal["key", "group"], str, str, int | None, str | None, int]] = []
        moment = datetime.fromtimestamp(now, UTC)
        stored = spent(key, moment)  # the key's copy: the mirror never counts less
        owners.append(("key", key.id, key.name, key.budget_micros, key.budget_period, stored))
        if key.group_id is not None:
            group = await self._group(key.group_id)
            if group is not None:
                owners.append(("group", key.group_id, *group))
        hold = secrets.token_hex(8)
        args: list[str | int | float] = [now, hold, micros, now + self.ttl]
        for _, _, _, budget, period, amount in owners:
            args += [-1 if budget is None else budget, since[period or "daily"], amount]
        try:
            answer = await self._reserve(keys=[_mirror(o[1]) for o in owners], args=args)
        except ERRORS as exc:
            return await self._fallback(exc, key, micros)
        self._regained()
        if answer[0] == 0:
            index, spent_now, held = int(answer[1]) - 1, int(answer[2]), int(answer[3])
            owner, _, name, budget, period, _ = owners[index]
            assert budget is not None  # the script refuses only a budget
            found = Budget(owner, name, budget, period, spent_now, held)
            raise refusal(found, self.currency, moment)
        budgets = tuple(
            Budget(owner, name, budget, period, int(answer[1 + 2 * i]), int(answer[2 + 2 * i]))
            for i, (owner, _, name, budget, period, _) in enumerate(owners)
            if budget is not None
        )
        return Hold(hold, key.id, key.group_id, micros, budgets, True, key.budget_period)

    def settle(self, hold: Hold, cost: int) -> None:
        """The hold's cost into the mirror (a task) and into the key database (its thread)."""
        self.store.settle(hold, cost)
        if not hold.mirrored:
            return
        task = asyncio.get_running_loop().create_task(self._settled(hold, cost))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settled(self, hold: Hold, cost: int) -> None:
        _, since = self.store._periods()
        owners = [(hold.key_id, hold.key_period)]
        if hold.group_id is not None:
            group = self._groups.get(hold.group_id)
            owners.append((hold.group_id, group[2] if group else None))
        keys = [_mirror(owner) for owner, _ in owners]
        periods = [since[period or "daily"] for _, period in owners]
        try:
            await self._settle(keys=keys, args=[hold.id, cost, *periods])
        except ERRORS as exc:
            # The hold expires in the mirror; the spend is in the key database already.
            self._lost(exc)

    async def _group(self, group_id: str) -> tuple[str, int | None, str | None, int] | None:
        """(name, budget, period, spent this period) of a group, as read at most a second ago.

        Requests arriving while the groups are being read wait for that read: answering them
        from the copy before it (empty at the start) held them against no group budget, and a
        burst of 20 at a fresh worker overspent a group by two answers."""
        if time.monotonic() - self._groups_at > _GROUPS_EVERY:
            async with self._groups_read:
                if time.monotonic() - self._groups_at > _GROUPS_EVERY:  # not read meanwhile
                    loop = asyncio.get_running_loop()
                    read = self._read_groups
                    self._groups = await loop.run_in_executor(self.store._executor, read)
                    self._groups_at = time.monotonic()
        return self._groups.get(group_id)

    def _read_groups(self) -> dict[str, tuple[str, int | None, str | None, int]]:
        _, since = self.store._periods()
        with self.store._translated(), self.store._transaction() as conn:
            rows = self.store._execute(
                conn,
                "SELECT id, name, budget_micros, budget_period, spent_micros, budget_since "
                "FROM key_groups",
                {},
            ).fetchall()
        out = {}
        for group_id, name, budget, period, used, started in rows:
            moment = parse_timestamp(started)
            current = moment is not None and timestamp(moment) >= since[period or "daily"]
            out[group_id] = (name, budget, period, used if current else 0)
        return out

    async def _fallback(self, exc: BaseException, key: Key, micros: int) -> Hold:
        self._lost(exc)
        if self.on_failure == "refuse":
            raise StorageUnavailable(
                "Money budgets are unavailable (the state store does not answer); retry shortly."
            ) from None
        return await self.store.reserve(key, micros)

    def _lost(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            reason = scrub(str(exc) or type(exc).__name__, self.url)
            log.warning(
                "Redis at %s does not answer (%s): money holds go to the key database",
                self.shown,
                reason,
            )

    def _regained(self) -> None:
        if self._down:
            self._down = False
            log.warning("Redis at %s answers again: money holds are in Redis again", self.shown)

    def flush(self) -> None:
        self.store.flush()

    def close(self) -> None:
        """The key database's holds; ``aclose`` closes the Redis connection."""
        self.store.close()

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)
        await self._redis.aclose()
