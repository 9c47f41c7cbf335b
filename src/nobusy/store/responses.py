"""Responses of the Responses API kept for a while: ``previous_response_id`` and
``GET/DELETE /v1/responses/{id}``.

Each row holds the conversation up to and including that response, as Responses items (what
the client sent, then the output), and the response object. A row belongs to the key that
created it (none while the service has no keys): another key sees it as missing. Rows expire
after ``responses_ttl``; expired rows are deleted as new ones are written. A write is one
small transaction on the caller's thread, after the answer has been sent.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from nobusy.errors import StorageUnavailable
from nobusy.store.migrations import open_db
from nobusy.store.sqlite import timestamp, transaction

__all__ = ["ResponseStore"]


class ResponseStore:
    """The ``responses`` table of ``data_dir/nobusy.db``; ``ttl`` seconds per response."""

    def __init__(
        self, data_dir: Path, ttl: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_db(data_dir)
        self._conn = self._db.conn

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(
        self, response_id: str, key_id: str | None, items: list[Any], response: dict[str, Any]
    ) -> None:
        """Keep a response and its conversation (nothing when ``ttl`` is 0)."""
        if self.ttl <= 0:
            return
        now = self._clock()
        with self._using(), transaction(self._conn) as conn:
            conn.execute("DELETE FROM responses WHERE expires <= ?", (now,))
            conn.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                (
                    response_id,
                    key_id,
                    timestamp(datetime.fromtimestamp(now, UTC)),
                    now + self.ttl,
                    orjson.dumps(items),
                    orjson.dumps(response),
                ),
            )

    def items(self, response_id: str, key_id: str | None) -> list[Any] | None:
        """The conversation up to ``response_id``, or None: unknown, expired or another key's."""
        row = self._row("items", response_id, key_id)
        return None if row is None else list(orjson.loads(row))

    def response(self, response_id: str, key_id: str | None) -> dict[str, Any] | None:
        row = self._row("response", response_id, key_id)
        return None if row is None else dict(orjson.loads(row))

    def delete(self, response_id: str, key_id: str | None) -> bool:
        with self._using(), transaction(self._conn) as conn:
            cursor = conn.execute(
                "DELETE FROM responses WHERE id = ? AND key_id IS ? AND expires > ?",
                (response_id, key_id, self._clock()),
            )
            return cursor.rowcount > 0

    def _row(self, column: str, response_id: str, key_id: str | None) -> bytes | None:
        with self._using():
            found = self._conn.execute(
                f"SELECT {column} FROM responses WHERE id = ? AND key_id IS ? AND expires > ?",
                (response_id, key_id, self._clock()),
            ).fetchone()
        return None if found is None else bytes(found[0])

    @contextmanager
    def _using(self) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"The response store is unavailable: {exc}.") from None
