"""The API keys in PostgreSQL, shared by every replica and checked from memory.

``KeyStore``'s logic and statements, over PostgreSQL: management (create, update, revoke, top
up; the CLI and the admin API, on threads) writes through one connection in one transaction
each. The request path never waits for PostgreSQL: ``authenticate`` reads the in-memory copy,
which ``watch`` (a task on the server's event loop, through psycopg's async pool) reloads
every ``refresh_interval``; ``charge`` takes the tokens off the copy at once and ``watch``
sends them. While PostgreSQL is down the copy keeps serving and the charges wait in memory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from nobusy.errors import NotFound, StorageUnavailable
from nobusy.keys import Hasher, Key, bad_field, sha256_hasher, show, sm3_hasher, utcnow
from nobusy.money.budgets import period_start
from nobusy.store.keys import _COLUMNS, KeyStore, index, to_key
from nobusy.store.pg_migrations import migrated
from nobusy.store.postgres import (
    CONNECT_TIMEOUT,
    ERRORS,
    Liveness,
    redact,
    startup_error,
    translated,
)
from nobusy.store.sqlite import timestamp

__all__ = ["PgKeyStore"]

log = logging.getLogger("nobusy")

# The spend starts again from 0 when the last charge was in an earlier budget period.
_CHARGE = (
    "UPDATE keys SET balance = balance - %(tokens)s, last_used_at = %(now)s, "
    "spent_micros = CASE WHEN coalesce(budget_since, '') < %(since)s THEN %(cost)s "
    "ELSE spent_micros + %(cost)s END, budget_since = CASE WHEN coalesce(budget_since, '') < "
    "%(since)s THEN %(since)s ELSE budget_since END WHERE id = %(id)s"
)


class PgKeyStore(KeyStore):
    """The keys in the PostgreSQL at ``url`` (migrated on open; ConfigError if it cannot be)."""

    _ORDER = "seq"

    def __init__(
        self,
        url: str,
        hashers: Hasher | Sequence[Hasher] = (sm3_hasher, sha256_hasher),
        *,
        refresh_interval: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
        liveness: Liveness | None = None,
    ) -> None:
        self._setup(hashers, refresh_interval, clock)
        self._url = url
        self.liveness = liveness or Liveness(redact(url))
        self._link = migrated(url)
        # Tokens and micro-units charged to the copy and not yet sent, by key id.
        self._unsent: dict[str, tuple[int, int]] = {}
        self._charge_lock = threading.Lock()
        try:
            with self._lock:
                self._conn = self._link.get()
                self._reload()
        except ERRORS as exc:
            self._link.close()
            raise startup_error(exc, url) from None
        except BaseException:
            self._link.close()  # a bug, not the database: no connection left for the GC
            raise

    def close(self) -> None:
        """Send the charges still waiting (once), then close the connection."""
        with self._lock:
            with self._charge_lock:
                unsent, self._unsent = self._unsent, {}
            if unsent:
                try:
                    with self._translated(), self._conn.conn.transaction():
                        for key_id, (tokens, cost) in unsent.items():
                            self._conn.conn.execute(_CHARGE, self._charge(key_id, tokens, cost))
                except StorageUnavailable as exc:  # shutting down: say what is lost
                    log.error("quota charges of %d keys not recorded: %s", len(unsent), exc)
            self._link.close()

    # Hot path: the copy only.

    def _maybe_refresh(self) -> None:
        """``watch`` refreshes the copy: a request never waits for the network."""

    def charge(self, key_id: str, tokens: int, cost_micros: int = 0) -> Key:
        """Take ``tokens`` off the copy's balance and add ``cost_micros`` to its spend now;
        ``watch`` sends them to PostgreSQL."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise bad_field("tokens", f"must be a whole number of at least 0, got {show(tokens)}")
        key = self._by_id.get(key_id)
        if key is None:
            raise NotFound(f"No API key with id '{key_id}'.", param="key")
        now = self._clock()
        balance = None if key.balance is None else key.balance - tokens
        start = period_start(key.budget_period, now)
        fresh = key.budget_since is None or key.budget_since < start
        key = replace(
            key,
            balance=balance,
            last_used_at=now,
            spent_micros=cost_micros if fresh else key.spent_micros + cost_micros,
            budget_since=start if fresh else key.budget_since,
        )
        with self._charge_lock:
            sent_tokens, sent_cost = self._unsent.get(key_id, (0, 0))
            self._unsent[key_id] = (sent_tokens + tokens, sent_cost + cost_micros)
            self._patch(key)
        return key

    def _charge(self, key_id: str, tokens: int, cost: int) -> dict[str, object]:
        key = self._by_id.get(key_id)
        since = period_start(key.budget_period if key else None, self._clock())
        return {
            "tokens": tokens, "now": self._now(), "since": timestamp(since), "cost": cost,
            "id": key_id,
        }  # fmt: skip

    def _patch(self, key: Key) -> None:
        self._by_id = {**self._by_id, key.id: key}
        self._by_prefix = {
            **self._by_prefix,
            key.prefix: [key if k.id == key.id else k for k in self._by_prefix[key.prefix]],
        }

    async def watch(self) -> None:
        """Every ``refresh_interval``: send the charges, reload the copy. Runs until cancelled."""
        pool = AsyncConnectionPool(
            self._url,
            min_size=1,
            max_size=2,
            open=False,
            timeout=CONNECT_TIMEOUT,
            kwargs={"autocommit": True, "application_name": "nobusy"},
            # Checked on each take (once a second): after a restart the pooled connections
            # are closed, and the first reload must not report PostgreSQL down.
            check=AsyncConnectionPool.check_connection,
            name="nobusy-keys",
        )
        # Opened without waiting: a pool that cannot connect keeps trying in its own task.
        await pool.open(wait=False)
        try:
            while True:
                await asyncio.sleep(self._refresh_interval)
                await self._refresh(pool)
        finally:
            await pool.close()

    async def _refresh(self, pool: AsyncConnectionPool[Any]) -> None:
        with self._charge_lock:
            unsent, self._unsent = self._unsent, {}
        try:
            async with pool.connection() as conn:
                if unsent:
                    async with conn.transaction():
                        for key_id, (tokens, cost) in unsent.items():
                            await conn.execute(_CHARGE, self._charge(key_id, tokens, cost))
                    unsent = {}
                cursor = await conn.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY seq")
                rows = await cursor.fetchall()
        except ERRORS as exc:
            self.liveness.down(exc, self._url, "reading API keys")
            return
        finally:
            if unsent:  # not sent: kept for the next round
                with self._charge_lock:
                    for key_id, (tokens, cost) in unsent.items():
                        old_tokens, old_cost = self._unsent.get(key_id, (0, 0))
                        self._unsent[key_id] = (old_tokens + tokens, old_cost + cost)
        self.liveness.up()
        self._install(rows)

    # Management (threads): one connection, under the lock.

    @contextmanager
    def _translated(self) -> Iterator[None]:
        with translated(self._url, "key store"):
            # Checked: management is rare, and the first call after a restart must not fail.
            self._conn = self._link.get(check=True)
            yield

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        with self._lock, self._translated():
            with self._conn.conn.transaction():
                yield self._conn
            self._reload()

    def _reload(self) -> None:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY seq").fetchall()
        self._install(rows)

    def _install(self, rows: Sequence[Sequence[object]]) -> None:
        """Swap in a new copy from ``rows``, less the tokens charged and not yet sent."""
        with self._charge_lock:
            keys = []
            for key in map(to_key, rows):
                unsent, cost = self._unsent.get(key.id, (0, 0))
                if unsent and key.balance is not None:
                    key = replace(key, balance=key.balance - unsent)
                if cost:  # a later period starts from 0 when sent; close enough until then
                    key = replace(key, spent_micros=key.spent_micros + cost)
                keys.append(key)
            self._by_id, self._by_prefix = index(keys)

    def _now(self) -> str:
        return timestamp(self._clock())
