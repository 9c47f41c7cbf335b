"""The audit log in PostgreSQL: one hash chain for every replica, serialized in the database.

``AuditLog``'s chain (keyed row hashes, the MAC'd head and anchor checkpoints, verification,
export, prune), over PostgreSQL. Several replicas append to the same chain: each batch is one
transaction that first takes a transaction-level advisory lock, then reads the head, numbers
and chains its rows after it and moves the head, so the chain is one sequence whichever
replica wrote each row, and ``nobusy audit verify`` walks it as it walks ``audit.db``. The
lock is held for one batch's insert (the writer batches for ``flush_interval``), so replicas
take turns per batch, not per row.

While PostgreSQL is down, events are spilled to a local file (content encrypted with the data
key, as in the table) and chained when they are replayed; each carries an ``event_id``, and a
replayed event already in the table is skipped, so none is stored twice.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from nobusy.crypto import CryptoSuite
from nobusy.store.audit import _CHAIN_COLUMNS, GENESIS, AuditLog, Store, _Pending
from nobusy.store.pg_migrations import migrated
from nobusy.store.postgres import Link, Liveness, Qmark, connect, redact
from nobusy.store.spill import Spill

__all__ = ["PgAuditLog"]

_CHAIN_LOCK = 0x6E62617564  # any fixed number: the advisory lock taken by every chain writer
_SPILL_AAD = b"nobusy-audit-spill"
_INSERT = f"INSERT INTO audit ({_CHAIN_COLUMNS}, event_id) VALUES ({'?, ' * 11}?)"


class PgAuditLog(AuditLog):
    """The audit log in the PostgreSQL at ``url``; spill files live in ``data_dir/spill``."""

    _SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ"
    _read_columns = _CHAIN_COLUMNS

    def __init__(
        self,
        url: str,
        data_dir: Path,
        suite: CryptoSuite,
        store: Store = "full",
        retention_days: int = 180,
        *,
        liveness: Liveness | None = None,
        retry_interval: float = 1.0,
        **options: Any,
    ) -> None:
        self._url, self._data_dir = url, data_dir
        self.liveness = liveness or Liveness(redact(url))
        self._retry_interval = retry_interval
        self._spill: Spill | None = None  # made by the first write: verify and export need none
        super().__init__(data_dir, suite, store, retention_days, **options)
        self.where = f"the audit log in PostgreSQL at {redact(url)}"

    def _open(self) -> Qmark:
        self._link = migrated(self._url)
        return self._link.get()

    def _close_db(self) -> None:
        if self._spill is not None:
            self._spill.close()
        self._link.close()

    def open_spill(self) -> Spill:
        """The spill file (adopting and replaying one left by a stopped process): the server
        opens it at start; verify and export never need it."""
        if self._spill is None:
            self._spill = Spill(
                self._data_dir, "audit", self._insert, self._link, self.liveness,
                lock=self._write_lock, retry_interval=self._retry_interval,
                encode=self._encode, decode=self._decode,
            )  # fmt: skip
        return self._spill

    @contextmanager
    def _transaction(self, link: Link | None = None) -> Iterator[Qmark]:
        db = (link or self._link).get()
        with db.conn.transaction():
            # Every writer of the chain (each replica's writer thread, prune) waits here.
            db.execute("SELECT pg_advisory_xact_lock(?)", (_CHAIN_LOCK,))
            yield db

    def _unguard(self, db: Any) -> None:
        db.execute("SELECT set_config('nobusy.pruning', 'on', true)")

    def _reguard(self, db: Any) -> None:
        db.execute("SELECT set_config('nobusy.pruning', 'off', true)")

    def _read(self) -> closing[Any]:
        return closing(Qmark(connect(self._url)))

    def _write(self, batch: list[_Pending]) -> None:
        """Into PostgreSQL (the writer holds ``_write_lock``, which the spill shares)."""
        self.open_spill().write([(*_fields(p), uuid.uuid4().hex) for p in batch])

    def _insert(self, rows: Sequence[Sequence[Any]], link: Link | None = None) -> None:
        """Chain ``rows`` (pending events with their event ids) after the head, skipping any
        event already stored (a batch replayed after a lost commit acknowledgement)."""
        with self._transaction(link) as db:
            ids = [row[-1] for row in rows]
            stored = {
                r[0]
                for r in db.execute("SELECT event_id FROM audit WHERE event_id = ANY(?)", (ids,))
            }
            last_id, prev = self._state(db, "head") or self._state(db, "anchor") or (0, GENESIS)
            out = []
            for row in rows:
                if row[-1] in stored:
                    continue
                last_id += 1
                sealed = self._seal(last_id, _Pending(*row[:-1]))
                row_hash = self._row_hash(prev, sealed)
                out.append((*sealed, prev, row_hash, row[-1]))
                prev = row_hash
            if out:
                db.executemany(_INSERT, out)
                self._set_state(db, "head", last_id, prev)

    def _encode(self, row: Sequence[Any]) -> list[Any]:
        """A spilled event as JSON: its content encrypted with the data key, in base64."""
        *head, payload, event_id = row
        if payload is not None:
            payload = base64.b64encode(self.suite.encrypt(payload, _SPILL_AAD)).decode()
        return [*head, payload, event_id]

    def _decode(self, row: Sequence[Any]) -> list[Any]:
        *head, payload, event_id = row
        if payload is not None:
            payload = self.suite.decrypt(base64.b64decode(payload), _SPILL_AAD)
        return [*head, payload, event_id]


def _fields(p: _Pending) -> tuple[Any, ...]:
    return (p.ns, p.event, p.request_id, p.key_id, p.alias, p.upstream, p.payload)
