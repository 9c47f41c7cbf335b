"""Usage rows in PostgreSQL, spilled to a local file while it is down and replayed after.

``UsageLog``'s queue, writer thread and ``committed`` waits, over PostgreSQL: each batch is one
transaction, or, while PostgreSQL does not answer, lines appended to a spill file in the data
dir (``nobusy.store.spill``) and written when it answers again, in order. Either way the row is
safe from a SIGKILL once ``committed`` returns. Each row carries a ``record_id`` made when it
was recorded; ``ON CONFLICT DO NOTHING`` on it means a batch replayed after a lost commit
acknowledgement is not stored twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nobusy.store.pg_migrations import migrated
from nobusy.store.postgres import ERRORS, Link, Liveness, redact
from nobusy.store.spill import Spill
from nobusy.store.usage import COLUMNS, UsageLog, UsageRecord

__all__ = ["PgUsageLog"]

log = logging.getLogger("nobusy")

_INSERT = (
    f"INSERT INTO usage ({COLUMNS}, record_id) VALUES ({', '.join(['%s'] * 17)}) "
    "ON CONFLICT (record_id) DO NOTHING"
)


class PgUsageLog(UsageLog):
    """Usage rows in the PostgreSQL at ``url``; the spill file lives in ``data_dir/spill``."""

    def __init__(
        self,
        url: str,
        data_dir: Path,
        *,
        liveness: Liveness | None = None,
        retry_interval: float = 1.0,
        **options: Any,
    ) -> None:
        self._url = url
        self.liveness = liveness or Liveness(redact(url))
        self._retry_interval = retry_interval
        super().__init__(data_dir, **options)

    def _open(self, data_dir: Path, busy_timeout: float) -> None:
        self._link = migrated(self._url)
        self.spill = Spill(
            data_dir, "usage", _insert, self._link, self.liveness,
            retry_interval=self._retry_interval,
        )  # fmt: skip

    def _close_db(self) -> None:
        self.spill.close()
        self._link.close()

    def _row(self, record: UsageRecord) -> tuple[object, ...]:
        return (*super()._row(record), uuid.uuid4().hex)

    def _commit(self, batch: list[tuple[object, ...]]) -> None:
        """Into PostgreSQL, or the spill file; a row the table refuses is logged and counted."""
        try:
            self.spill.write(batch)
        except ERRORS:
            if len(batch) == 1:
                self.failed += 1
                log.exception("usage log: record %s cannot be stored", batch[0][1])
                return
            for row in batch:
                self._commit([row])
            return
        self.written += len(batch)

    def _insert(self, rows: Sequence[Sequence[Any]]) -> None:
        _insert(rows, self._link)


def _insert(rows: Sequence[Sequence[Any]], link: Link) -> None:
    """One transaction; rows already stored (by ``record_id``) are skipped."""
    conn = link.get().conn
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(_INSERT.encode(), rows)
