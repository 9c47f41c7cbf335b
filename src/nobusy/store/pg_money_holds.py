"""Money holds in the PostgreSQL ``store``, shared by every replica: ``MoneyHolds`` over
PostgreSQL, each step one statement (one round trip).

A hold locks its key's row and its group's (``FOR UPDATE``: a concurrent hold waits, then
reads the row as that one committed it), checks both budgets, and only when both have room adds
the hold to both and inserts its row, all in one statement with data-modifying CTEs. A
settlement deletes the row and moves its amount from held to spent on both rows, also in one
statement. Expired holds (a replica killed) are released at most once a second per process.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from nobusy.errors import StorageUnavailable
from nobusy.keys import Key
from nobusy.money.budgets import Budget, refusal
from nobusy.store.money_holds import SINCE, SPENT, Hold, MoneyHolds
from nobusy.store.postgres import Link, translated

__all__ = ["PgMoneyHolds"]

log = logging.getLogger("nobusy")

_SWEEP_EVERY = 1.0  # seconds between a process's sweeps of expired holds

_ROW = f"SELECT id, name, budget_micros, budget_period, {SPENT} AS spent, reserved_micros"
_OVER = "budget_micros IS NOT NULL AND spent + reserved_micros >= budget_micros"
_RESERVE = f"""
WITH k AS ({_ROW} FROM keys WHERE id = :key FOR UPDATE),
g AS ({_ROW} FROM key_groups WHERE id = :grp FOR UPDATE),
fits AS (SELECT NOT EXISTS (SELECT 1 FROM k WHERE {_OVER})
                AND NOT EXISTS (SELECT 1 FROM g WHERE {_OVER}) AS ok),
uk AS (UPDATE keys SET reserved_micros = keys.reserved_micros + :micros FROM fits
       WHERE keys.id = :key AND fits.ok RETURNING 1),
ug AS (UPDATE key_groups SET reserved_micros = key_groups.reserved_micros + :micros FROM fits
       WHERE key_groups.id = :grp AND fits.ok RETURNING 1),
h AS (INSERT INTO money_holds SELECT :hold, :key, :grp, :micros, :expires FROM fits
      WHERE fits.ok RETURNING 1)
SELECT 'key', name, budget_micros, budget_period, spent, reserved_micros,
       (SELECT ok FROM fits), (SELECT count(*) FROM uk) + (SELECT count(*) FROM h) FROM k
UNION ALL
SELECT 'group', name, budget_micros, budget_period, spent, reserved_micros,
       (SELECT ok FROM fits), (SELECT count(*) FROM ug) FROM g
ORDER BY 1 DESC
"""
_LESS = "CASE WHEN reserved_micros > r.released THEN reserved_micros - r.released ELSE 0 END"
_SET = (
    f"reserved_micros = {_LESS}, spent_micros = {SPENT} + :cost, budget_since = CASE WHEN "
    f"coalesce(budget_since, '') < {SINCE} THEN {SINCE} ELSE budget_since END"
)
_SETTLE = f"""
WITH gone AS (DELETE FROM money_holds WHERE id = :hold RETURNING micros),
r AS (SELECT COALESCE((SELECT micros FROM gone), 0) AS released),
uk AS (UPDATE keys SET {_SET} FROM r WHERE keys.id = :key RETURNING 1),
ug AS (UPDATE key_groups SET {_SET} FROM r WHERE key_groups.id = :grp RETURNING 1)
SELECT (SELECT count(*) FROM uk), (SELECT count(*) FROM ug)
"""
_SWEEP = """
WITH gone AS (DELETE FROM money_holds WHERE expires < :now RETURNING key_id, group_id, micros),
uk AS (UPDATE keys SET reserved_micros = GREATEST(keys.reserved_micros - s.m, 0)
       FROM (SELECT key_id, sum(micros) AS m FROM gone GROUP BY key_id) s
       WHERE keys.id = s.key_id RETURNING 1),
ug AS (UPDATE key_groups SET reserved_micros = GREATEST(key_groups.reserved_micros - s.m, 0)
       FROM (SELECT group_id, sum(micros) AS m FROM gone WHERE group_id IS NOT NULL
             GROUP BY group_id) s
       WHERE key_groups.id = s.group_id RETURNING 1)
SELECT count(*), (SELECT count(*) FROM uk), (SELECT count(*) FROM ug) FROM gone
"""
_NAMED = re.compile(r":([a-z]+)\b")


def _pg(sql: str) -> bytes:
    return _NAMED.sub(r"%(\1)s", sql).encode()


class PgMoneyHolds(MoneyHolds):
    """The holds in the PostgreSQL at ``url``, shared by every replica."""

    def __init__(
        self, url: str, currency: str, ttl: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._url = url
        self._swept = 0.0
        super().__init__(Path(), currency, ttl, clock)

    def _open(self, data_dir: Path) -> None:
        self._link = Link(self._url)

    def _transaction(self) -> AbstractContextManager[Any]:
        return _autocommit(self._link.get().conn)

    def _execute(self, conn: Any, sql: str, params: dict[str, Any]) -> Any:
        return conn.execute(_pg(sql), params)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        with translated(self._url, "money budgets"):
            yield

    def _reserve(self, key: Key, micros: int) -> Hold:
        now, since = self._periods()
        hold = Hold(secrets.token_hex(8), key.id, key.group_id, micros, ())
        args = {**since, "key": key.id, "grp": key.group_id, "micros": micros,
                "hold": hold.id, "expires": now + self.ttl}  # fmt: skip
        with self._translated(), self._transaction() as conn:
            if now - self._swept > _SWEEP_EVERY:
                self._swept = now
                self._execute(conn, _SWEEP, {"now": now})
            rows = self._execute(conn, _RESERVE, args).fetchall()
        budgets: list[Budget] = []
        for kind, name, budget, period, spent, held, _, _ in rows:
            owner: Literal["key", "group"] = "key" if kind == "key" else "group"
            if budget is not None:
                budgets.append(Budget(owner, name, budget, period, spent, held))
        if rows and not rows[0][6]:  # the key's (first) or the group's budget has no room
            over = next(b for b in budgets if b.left <= 0)  # `fits` read these very rows
            raise refusal(over, self.currency, datetime.fromtimestamp(now, UTC))
        return Hold(hold.id, key.id, key.group_id, micros, tuple(budgets))

    def _settle(self, hold: Hold, cost: int) -> None:
        _, since = self._periods()
        args = {**since, "hold": hold.id, "key": hold.key_id, "grp": hold.group_id, "cost": cost}
        try:
            with self._translated(), self._transaction() as conn:
                self._execute(conn, _SETTLE, args)
        except StorageUnavailable as exc:  # the hold stays until it expires
            log.error("could not settle money hold %s (cost %d): %s", hold.id, cost, exc)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._link.close()


@contextmanager
def _autocommit(conn: Any) -> Iterator[Any]:
    # One statement each: autocommit makes it its own transaction, with no BEGIN round trip.
    yield conn
