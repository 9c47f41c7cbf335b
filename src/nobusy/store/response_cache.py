"""``SqliteCache``: the response cache's entries in ``data_dir/cache.db``, shared by the worker
processes of one host (``cache.ResponseCache`` keeps the recent ones in memory in front).

A lookup is one primary-key read on the caller's thread (tens of microseconds, and only when
memory had nothing); a write goes to a thread of its own so the event loop never waits on a
commit. SQLite errors are logged and read as "not kept": the cache never fails a request.
Expired rows are deleted every ``_PRUNE_EVERY`` writes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nobusy.errors import ConfigError
from nobusy.store.migrations import CACHE, migrate
from nobusy.store.sqlite import transaction

__all__ = ["DB_NAME", "SqliteCache"]

DB_NAME = "cache.db"
_PRUNE_EVERY = 200

log = logging.getLogger("nobusy")


class SqliteCache:
    """Entries by key in ``data_dir/cache.db``, each expiring ``keep`` seconds after its write."""

    def __init__(self, data_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        path = data_dir / DB_NAME
        try:
            self._db = migrate(path, CACHE)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the cache database {path}: {exc}") from None
        self._conn = self._db.conn
        self._conn.execute("PRAGMA busy_timeout = 200")  # a busy file is a miss, not a wait
        self._lock = threading.Lock()
        self._clock = clock
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="nobusy-cache")
        self._writes = 0

    async def get(self, key: str) -> bytes | None:
        try:
            with self._lock:
                row = self._conn.execute(
                    "SELECT value FROM cache WHERE key = ? AND expires > ?", (key, self._clock())
                ).fetchone()
        except sqlite3.Error as exc:
            log.warning("response cache: reading %s failed: %s", DB_NAME, exc)
            return None
        return None if row is None else bytes(row[0])

    def put(self, key: str, value: bytes, keep: float) -> None:
        expires = self._clock() + keep
        asyncio.get_running_loop().run_in_executor(self._writer, self._write, key, value, expires)

    def _write(self, key: str, value: bytes, expires: float) -> None:
        try:
            with self._lock:
                self._writes += 1
                with transaction(self._conn) as conn:
                    if self._writes % _PRUNE_EVERY == 0:
                        conn.execute("DELETE FROM cache WHERE expires <= ?", (self._clock(),))
                    conn.execute(
                        "INSERT OR REPLACE INTO cache VALUES (?, ?, ?)", (key, expires, value)
                    )
        except sqlite3.Error as exc:
            log.warning("response cache: writing %s failed: %s", DB_NAME, exc)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._writer.shutdown)
        with self._lock:
            self._db.close()
