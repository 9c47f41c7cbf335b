"""``PgResponseStore``: the Responses API's kept responses in the PostgreSQL that ``store``
names, so a conversation started on one replica continues on any other
(``previous_response_id``, ``GET/DELETE /v1/responses/{id}``).

The same rows as ``store.responses`` (the ``responses`` table of migration
``m008_responses_shared``), on one connection serialised by a lock, as the SQLite store is.
Calls are synchronous, like the protocol's parser that reads the history: a point read or one
insert, well under a millisecond on a LAN. While PostgreSQL does not answer, each call fails
at once with ``StorageUnavailable`` (503) for ``_PAUSE`` seconds after a failure, so a dead
server costs one connect timeout, not one per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson

from nobusy.errors import StorageUnavailable
from nobusy.store.pg_migrations import migrated
from nobusy.store.postgres import Qmark, redact, translated
from nobusy.store.sqlite import timestamp

__all__ = ["PgResponseStore"]

_PAUSE = 5.0
_COLUMNS = "id, key_id, created_at, expires, items, response"


class PgResponseStore:
    """The ``responses`` table in PostgreSQL; ``ttl`` seconds per response."""

    def __init__(self, url: str, ttl: float, *, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self._url = url
        self._clock = clock
        self._lock = threading.Lock()
        self._link = migrated(url)  # ConfigError at start naming what to check
        self._paused_until = 0.0

    def close(self) -> None:
        with self._lock:
            self._link.close()

    def put(
        self, response_id: str, key_id: str | None, items: list[Any], response: dict[str, Any]
    ) -> None:
        """Keep a response and its conversation (nothing when ``ttl`` is 0)."""
        if self.ttl <= 0:
            return
        now = self._clock()
        row = (
            response_id,
            key_id,
            timestamp(datetime.fromtimestamp(now, UTC)),
            now + self.ttl,
            orjson.dumps(items),
            orjson.dumps(response),
        )
        with self._using() as conn, conn.conn.transaction():
            conn.execute("DELETE FROM responses WHERE expires <= ?", (now,))
            conn.execute(
                f"INSERT INTO responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) "
                "DO UPDATE SET key_id = EXCLUDED.key_id, created_at = EXCLUDED.created_at, "
                "expires = EXCLUDED.expires, items = EXCLUDED.items, "
                "response = EXCLUDED.response",
                row,
            )

    def items(self, response_id: str, key_id: str | None) -> list[Any] | None:
        """The conversation up to ``response_id``, or None: unknown, expired or another key's."""
        row = self._row("items", response_id, key_id)
        return None if row is None else list(orjson.loads(row))

    def response(self, response_id: str, key_id: str | None) -> dict[str, Any] | None:
        row = self._row("response", response_id, key_id)
        return None if row is None else dict(orjson.loads(row))

    def delete(self, response_id: str, key_id: str | None) -> bool:
        with self._using() as conn:
            cursor = conn.execute(
                "DELETE FROM responses WHERE id = ? AND key_id IS NOT DISTINCT FROM ? "
                "AND expires > ?",
                (response_id, key_id, self._clock()),
            )
            return cursor.rowcount > 0

    def _row(self, column: str, response_id: str, key_id: str | None) -> bytes | None:
        with self._using() as conn:
            found = conn.execute(
                f"SELECT {column} FROM responses WHERE id = ? AND key_id IS NOT DISTINCT "
                "FROM ? AND expires > ?",
                (response_id, key_id, self._clock()),
            ).fetchone()
        return None if found is None else bytes(found[0])

    @contextmanager
    def _using(self) -> Iterator[Qmark]:
        with self._lock:
            if time.monotonic() < self._paused_until:
                raise StorageUnavailable(
                    f"The response store in PostgreSQL at {redact(self._url)} is unavailable; "
                    "retry shortly."
                )
            try:
                with translated(self._url, "response store"):
                    yield self._link.get()
            except StorageUnavailable:
                self._paused_until = time.monotonic() + _PAUSE
                raise
