"""Money held by requests in flight, so that a budget holds across processes and replicas.

Before its upstream call a request of a key with a budget (its own or its group's) reserves
its worst-case cost: one transaction that adds it to the key's ``reserved_micros`` with a
conditional UPDATE (``spent + reserved < budget``, or no row changes and the request is
refused), the same on its group, and a row in ``money_holds``. When the request ends (its
``finally``, a client that left too) ``settle`` deletes the row, takes the reservation off and
adds the real cost to the spend, in one transaction. A hold whose process died is released
once it expires (``pricing.hold_ttl``), by the next reservation's sweep.

This is the SQLite backend (``nobusy.db``, shared by the workers of one host): the
transaction is ``BEGIN IMMEDIATE``, so concurrent reservations queue on the database's write
lock and none passes a full budget. Work runs on one thread of its own: the event loop never
waits for that lock. PostgreSQL's backend (``store.pg_money_holds``, every replica) says the
same in one statement per step. Without holds (``pricing.holds: false``) none of this runs.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from nobusy.errors import StorageUnavailable
from nobusy.keys import Key
from nobusy.money.budgets import Budget, period_start, refusal
from nobusy.store.migrations import open_db
from nobusy.store.sqlite import timestamp, transaction

__all__ = ["SINCE", "SPENT", "Hold", "MoneyHolds"]

log = logging.getLogger("nobusy")

# The start of the row's current period, and what it spent in it (0 after a reset).
SINCE = (
    "(CASE budget_period WHEN 'weekly' THEN :weekly WHEN 'monthly' THEN :monthly ELSE :daily END)"
)
SPENT = f"(CASE WHEN coalesce(budget_since, '') < {SINCE} THEN 0 ELSE spent_micros END)"
_LESS = "CASE WHEN reserved_micros > :released THEN reserved_micros - :released ELSE 0 END"

_RESERVE = (
    "UPDATE {table} SET reserved_micros = reserved_micros + :micros WHERE id = :id AND "
    f"(budget_micros IS NULL OR {SPENT} + reserved_micros < budget_micros) "
    f"RETURNING name, budget_micros, budget_period, {SPENT}, reserved_micros - :micros"
)
_FOUND = (
    f"SELECT name, budget_micros, budget_period, {SPENT}, reserved_micros FROM {{table}} "
    "WHERE id = :id"
)
_SETTLE = (
    f"UPDATE {{table}} SET reserved_micros = {_LESS}, spent_micros = {SPENT} + :cost, "
    f"budget_since = CASE WHEN coalesce(budget_since, '') < {SINCE} THEN {SINCE} "
    "ELSE budget_since END WHERE id = :id"
)
_RELEASE = f"UPDATE {{table}} SET reserved_micros = {_LESS} WHERE id = :id"
_EXPIRED = "DELETE FROM money_holds WHERE expires < :now RETURNING key_id, group_id, micros"
_HOLD = "INSERT INTO money_holds VALUES (:id, :key, :group, :micros, :expires)"
_TAKEN = "DELETE FROM money_holds WHERE id = :id RETURNING micros"
_TABLES = {"key": "keys", "group": "key_groups"}


@dataclass(frozen=True, slots=True)
class Hold:
    """A request's reservation: how much, on which key and group, and the budgets as they
    were before it (for the warning header)."""

    id: str
    key_id: str
    group_id: str | None
    micros: int
    budgets: tuple[Budget, ...]
    mirrored: bool = False  # decided in Redis (nobusy.store.redis_money_holds)
    key_period: str | None = None  # the key's budget period then (the mirror's to settle)


class MoneyHolds:
    """The holds in ``data_dir/nobusy.db``, shared by the worker processes of one host."""

    def __init__(
        self,
        data_dir: Path,
        currency: str,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.currency, self.ttl, self.clock = currency, ttl, clock
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nobusy-holds")
        self._open(data_dir)

    def _open(self, data_dir: Path) -> None:
        self._db = open_db(data_dir)
        self._conn: Any = self._db.conn

    def _transaction(self) -> AbstractContextManager[Any]:
        return transaction(self._conn)

    def _execute(self, conn: Any, sql: str, params: dict[str, Any]) -> Any:
        return conn.execute(sql, params)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"money budgets unavailable: {exc}") from None

    async def reserve(self, key: Key, micros: int) -> Hold:
        """Hold ``micros`` against the key's budget and its group's; BudgetExhausted naming
        the budget that has no room left (the key's first)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._reserve, key, micros)

    def settle(self, hold: Hold, cost: int) -> None:
        """Replace ``hold`` by the request's real ``cost``, without waiting."""
        self._executor.submit(self._settle, hold, cost)

    def _periods(self) -> tuple[float, dict[str, Any]]:
        now = self.clock()
        moment = datetime.fromtimestamp(now, UTC)
        since = {p: timestamp(period_start(p, moment)) for p in ("daily", "weekly", "monthly")}
        return now, since

    def _reserve(self, key: Key, micros: int) -> Hold:
        now, since = self._periods()
        hold = secrets.token_hex(8)
        budgets: list[Budget] = []
        with self._translated(), self._transaction() as conn:
            self._sweep(conn, now)
            for kind, row_id in (("key", key.id), ("group", key.group_id)):
                if row_id is None:
                    continue
                owner: Literal["key", "group"] = "key" if kind == "key" else "group"
                args = {**since, "id": row_id, "micros": micros}
                table = _TABLES[kind]
                row = self._execute(conn, _RESERVE.format(table=table), args).fetchone()
                if row is None:
                    found = self._execute(conn, _FOUND.format(table=table), args).fetchone()
                    if found is None:  # a group deleted meanwhile: nothing to hold against
                        continue
                    name, budget, period, spent, held = found
                    moment = datetime.fromtimestamp(now, UTC)
                    raise refusal(
                        Budget(owner, name, budget, period, spent, held), self.currency, moment
                    )
                name, budget, period, spent, held = row
                if budget is not None:
                    budgets.append(Budget(owner, name, budget, period, spent, held))
            group = key.group_id
            args = {"id": hold, "key": key.id, "group": group, "micros": micros}
            self._execute(conn, _HOLD, {**args, "expires": now + self.ttl})
        return Hold(hold, key.id, group, micros, tuple(budgets))

    def _sweep(self, conn: Any, now: float) -> None:
        """Release the holds past their time (their process died before it settled them)."""
        for key_id, group_id, micros in self._execute(conn, _EXPIRED, {"now": now}).fetchall():
            log.warning("released an expired money hold of %s (%d micro-units)", key_id, micros)
            for kind, row_id in (("key", key_id), ("group", group_id)):
                if row_id is not None:
                    args = {"id": row_id, "released": micros}
                    self._execute(conn, _RELEASE.format(table=_TABLES[kind]), args)

    def _settle(self, hold: Hold, cost: int) -> None:
        _, since = self._periods()
        try:
            with self._translated(), self._transaction() as conn:
                row = self._execute(conn, _TAKEN, {"id": hold.id}).fetchone()
                released = 0 if row is None else row[0]  # none: the sweep released it
                for kind, row_id in (("key", hold.key_id), ("group", hold.group_id)):
                    if row_id is not None:
                        args = {**since, "id": row_id, "released": released, "cost": cost}
                        self._execute(conn, _SETTLE.format(table=_TABLES[kind]), args)
        except StorageUnavailable as exc:
            # The hold stays until it expires: the budget errs on the safe side meanwhile.
            log.error("could not settle money hold %s (cost %d): %s", hold.id, cost, exc)

    def flush(self) -> None:
        """Wait for the settlements submitted so far."""
        self._executor.submit(lambda: None).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._db.close()
