"""Each key's rate and concurrency counters in ``nobusy.db``, shared by the worker processes.

The ``LimitCounters`` backend for ``--workers N``; the checks are ``nobusy.admission.limits``'.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nobusy.admission.limits import WINDOW, check_counts, check_key, limited
from nobusy.admission.shared import process_alive
from nobusy.errors import StorageUnavailable
from nobusy.keys import Key
from nobusy.store.migrations import open_db
from nobusy.store.sqlite import transaction

__all__ = ["SharedKeyLimits"]


class SharedKeyLimits:
    """The same counters in ``nobusy.db``, so every worker process sees every request.

    Each admission of a key with a limit is one short transaction on a thread of its own (the
    event loop never waits on SQLite's lock). Requests in flight are counted per process, and
    counts of processes that died are ignored, so a crashed worker cannot hold slots forever.
    """

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.pid = os.getpid()
        self._db = open_db(data_dir)
        self._conn = self._db.conn
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nobusy-limits")

    async def admit(self, key: Key, alias: str, estimate: int) -> None:
        check_key(key, alias)
        if not limited(key):
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._admit, key, estimate)

    def _admit(self, key: Key, estimate: int) -> None:
        now = self.clock()
        try:
            with transaction(self._conn) as conn:
                conn.execute(
                    "DELETE FROM key_window WHERE key_id = ? AND at < ?", (key.id, now - WINDOW)
                )
                requests, tokens, oldest = conn.execute(
                    "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(tokens), 0), "
                    "MIN(CASE WHEN requests > 0 THEN at END) FROM key_window WHERE key_id = ?",
                    (key.id,),
                ).fetchone()
                in_flight = sum(
                    n
                    for pid, n in conn.execute(
                        "SELECT pid, n FROM key_in_flight WHERE key_id = ?", (key.id,)
                    )
                    if process_alive(pid)
                )
                check_counts(key, in_flight, requests, tokens, oldest, estimate, now)
                conn.execute(
                    "INSERT INTO key_window (key_id, at, requests, tokens) VALUES (?, ?, 1, ?)",
                    (key.id, now, estimate),
                )
                conn.execute(
                    "INSERT INTO key_in_flight (key_id, pid, n) VALUES (?, ?, 1) "
                    "ON CONFLICT (key_id, pid) DO UPDATE SET n = n + 1",
                    (key.id, self.pid),
                )
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"rate limits unavailable: {exc}") from None

    def done(self, key_id: str, estimate: int, actual: int) -> None:
        self._executor.submit(self._done, key_id, estimate, actual)

    def _done(self, key_id: str, estimate: int, actual: int) -> None:
        try:
            with transaction(self._conn) as conn:
                conn.execute(
                    "UPDATE key_in_flight SET n = MAX(n - 1, 0) WHERE key_id = ? AND pid = ?",
                    (key_id, self.pid),
                )
                conn.execute(
                    "INSERT INTO key_window (key_id, at, requests, tokens) VALUES (?, ?, 0, ?)",
                    (key_id, self.clock(), actual - estimate),
                )
        except sqlite3.Error:
            pass  # a correction lost to a locked database only makes the window estimate stand

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._conn.close()
