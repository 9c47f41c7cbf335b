"""A tamper-evident audit log: one row per event in ``data_dir/audit.db``, chained by keyed hashes.

Each row's ``row_hash`` is ``HMAC-H(chain key, bytes(prev_hash) || canonical)`` where H is the
suite's hash (SM3 or SHA-256), the chain key is HKDF'd from the data key, and ``canonical`` is
the orjson array ``[id, time, request_id, key_id, alias, upstream, event, content_hash,
H(stored content) or null]``. Keyed, because anyone who can write the file could recompute an
unkeyed chain after an edit. ``content_hash`` is HMAC-H of the content (orjson, sorted keys)
with its own key, so ``store: hash`` does not let short prompts be guessed from their hashes.

Detected: an edited, inserted, reordered or deleted row; rows deleted from the end (the MAC'd
``head`` checkpoint, written in the same transaction as the rows, names the last row); rows
deleted from the start (the MAC'd ``anchor`` left by ``prune`` names the last pruned row).
Not detected here: the whole database deleted or replaced by an older copy of itself (with
its head); ship signed exports elsewhere for that. Anyone holding the data key can rewrite.
"""

from __future__ import annotations

import base64
import hmac
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson

from nobusy.crypto import CryptoSuite, verify_signature
from nobusy.store.migrations import AUDIT, AUDIT_NO_DELETE, migrate
from nobusy.store.sqlite import read_only, transaction
from nobusy.store.writer import BatchWriter

__all__ = ["AUDIT_DB", "AuditError", "AuditLog", "Store", "VerifyResult", "verify_export"]

log = logging.getLogger("nobusy.audit")

Store = Literal["full", "hash"]
AUDIT_DB = "audit.db"
GENESIS = "00" * 32
_COLUMNS = "id, time, request_id, key_id, alias, upstream, event, content, content_hash"
_CHAIN_COLUMNS = f"{_COLUMNS}, prev_hash, row_hash"
_READ_COLUMNS = _CHAIN_COLUMNS.replace("content,", "CAST(content AS BLOB),")


class AuditError(Exception):
    """The audit log cannot be used as asked: another suite or key, or a broken chain."""


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows_checked: int
    first_bad_row_id: int | None
    reason: str
    pruned_through: int = 0  # rows up to this id were removed by prune (the anchor)
    last_row_id: int | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    ns: int
    event: str
    request_id: str
    key_id: str | None
    alias: str | None
    upstream: str | None
    payload: bytes | None


class AuditLog:
    """The audit log of one data dir: ``append`` queues, a writer thread commits in batches."""

    def __init__(
        self,
        data_dir: Path,
        suite: CryptoSuite,
        store: Store = "full",
        retention_days: int = 180,
        *,
        queue_size: int = 10_000,
        batch_size: int = 512,
        flush_interval: float = 0.05,
        block_timeout: float = 0.05,
    ) -> None:
        self.path = data_dir / AUDIT_DB
        self.suite, self.store, self.retention_days = suite, store, retention_days
        self._chain_key = suite.subkey("audit-chain")
        self._content_key = suite.subkey("audit-content")
        self._block_timeout = block_timeout
        self.dropped = self.written = 0
        self._write_lock = threading.RLock()  # the write connection: writer thread or prune()
        # Never held while writing: append() must not wait behind a slow disk or lock.
        self._drop_lock = threading.Lock()
        self.where = str(self.path)  # where the log is, in messages
        self._db = self._open()
        try:
            self._check_meta()
        except BaseException:
            self._db.close()
            raise
        # Started by the first append: a log opened only to verify or export starts none.
        self._writer = BatchWriter[_Pending](
            "nobusy-audit",
            self._write_locked,
            queue_size=queue_size,
            batch_size=batch_size,
            linger=flush_interval,
        )

    # What differs between databases (nobusy.store.pg_audit overrides these).
    _SNAPSHOT = "BEGIN"  # reads in one snapshot
    _read_columns = _READ_COLUMNS

    def _open(self) -> Any:
        # Autocommit: transactions are explicit (``transaction``), the meta rows commit alone.
        return migrate(self.path, AUDIT, autocommit=True).conn

    def _close_db(self) -> None:
        self._db.close()

    def _transaction(self) -> AbstractContextManager[Any]:
        """A write transaction on the chain: no other writer appends until it ends."""
        return transaction(self._db)

    def _unguard(self, db: Any) -> None:
        db.execute("DROP TRIGGER audit_no_delete")

    def _reguard(self, db: Any) -> None:
        db.execute(AUDIT_NO_DELETE)

    @property
    def failed(self) -> int:
        """Rows in batches that could not be written."""
        return self._writer.lost

    def _check_meta(self) -> None:
        check = self._mac(b"key-check", "")
        # ON CONFLICT ... DO NOTHING: the same statement in SQLite and PostgreSQL.
        for name, value in (("suite", self.suite.name), ("key_check", check)):
            self._db.execute(
                "INSERT INTO audit_meta VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, value)
            )
        meta = dict(self._db.execute("SELECT name, value FROM audit_meta").fetchall())
        if meta["suite"] != self.suite.name:
            raise AuditError(
                f"{self.where} was written with crypto {meta['suite']!r}, not "
                f"{self.suite.name!r}: set crypto (NOBUSY_CRYPTO) to {meta['suite']!r}"
            )
        if meta["key_check"] != check:
            raise AuditError(
                f"{self.where} was written with another data key (NOBUSY_SECRET_KEY or "
                "secret.key): its chain cannot be verified or its content decrypted with this one"
            )

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(
        self,
        event: str,
        request_id: str,
        content: Any = None,
        *,
        key_id: str | None = None,
        alias: str | None = None,
        upstream: str | None = None,
    ) -> bool:
        """Queue one row (thread-safe); False when it was dropped: queue full or log closed."""
        payload = None if content is None else orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        item = _Pending(time.time_ns(), event, request_id, key_id, alias, upstream, payload)
        if self._writer.put(item, timeout=self._block_timeout):
            return True
        with self._drop_lock:
            self.dropped += 1
            n = self.dropped
        if n == 1 or n % 1000 == 0:
            log.warning("audit queue full or closed: %d rows dropped so far", n)
        return False

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every row queued so far is committed."""
        self._writer.flush(timeout)

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the database."""
        if self._writer.closed:
            return
        late = self._writer.close()
        with self._drop_lock:
            self.dropped += len(late)
        # A prune() still running on its thread (its task cancelled at shutdown) holds the
        # write connection: closing it under that thread crashed the interpreter.
        with self._write_lock:
            self._close_db()

    def _write_locked(self, batch: list[_Pending]) -> None:
        with self._write_lock:
            self._write(batch)
        self.written += len(batch)

    def _write(self, batch: list[_Pending]) -> None:
        with self._transaction() as db:
            # The head is read inside the write lock, so several workers share one chain.
            last_id, prev = self._state(db, "head") or self._state(db, "anchor") or (0, GENESIS)
            rows = []
            for p in batch:
                last_id += 1
                row = self._seal(last_id, p)
                row_hash = self._row_hash(prev, row)
                rows.append((*row, prev, row_hash))
                prev = row_hash
            db.executemany(f"INSERT INTO audit ({_CHAIN_COLUMNS}) VALUES ({'?, ' * 10}?)", rows)
            self._set_state(db, "head", last_id, prev)

    def _seal(self, row_id: int, p: _Pending) -> tuple[Any, ...]:
        when = datetime.fromtimestamp(p.ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        content = content_hash = None
        if p.payload is not None:
            content_hash = self.suite.keyed_hash(self._content_key, p.payload).hex()
            if self.store == "full":
                content = self.suite.encrypt(p.payload, _aad(row_id))
        return (row_id, when, p.request_id, p.key_id, p.alias, p.upstream, p.event, content,
                content_hash)  # fmt: skip

    def _row_hash(self, prev: str, row: tuple[Any, ...]) -> str:
        *fields, content, content_hash = row
        digest = None if content is None else self.suite.hexdigest(content)
        canonical = orjson.dumps([*fields, content_hash, digest])
        return self.suite.keyed_hash(self._chain_key, bytes.fromhex(prev) + canonical).hex()

    def _row_matches(self, prev: str, row: tuple[Any, ...], stored_hash: str) -> bool:
        try:
            return self._row_hash(prev, row) == stored_hash
        except TypeError:  # a field's type was changed (orjson cannot encode a blob)
            return False

    def _mac(self, name: bytes, row_hash: str, row_id: int = 0) -> str:
        return self.suite.keyed_hash(self._chain_key, name + orjson.dumps([row_id, row_hash])).hex()

    def _state(self, db: Any, name: str) -> tuple[int, str] | None:
        row = db.execute(
            "SELECT row_id, row_hash, mac FROM audit_chain WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        if not hmac.compare_digest(str(row[2]), self._mac(name.encode(), row[1], row[0])):
            raise AuditError(f"the {name} checkpoint was altered (its MAC does not match)")
        return int(row[0]), str(row[1])

    def _set_state(self, db: Any, name: str, row_id: int, row_hash: str) -> None:
        mac = self._mac(name.encode(), row_hash, row_id)
        db.execute(
            "INSERT INTO audit_chain VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "row_id = excluded.row_id, row_hash = excluded.row_hash, mac = excluded.mac",
            (name, row_id, row_hash, mac),
        )

    def _read(self) -> closing[Any]:
        db = read_only(self.path)
        # Tampered text need not be UTF-8: read it anyway, so the chain reports it as changed.
        db.text_factory = lambda b: b.decode(errors="replace")
        return closing(db)

    def verify(self) -> VerifyResult:
        """Walk the whole chain from the prune anchor to the head; report the first bad row."""
        with self._read() as db:
            db.execute(self._SNAPSHOT)  # one snapshot: rows and checkpoints from the same moment
            try:
                return self._walk(db, None)
            except AuditError as e:
                return VerifyResult(False, 0, None, str(e))
            finally:
                db.execute("COMMIT")

    def _walk(self, db: Any, upto: int | None) -> VerifyResult:
        anchor_id, prev = self._state(db, "anchor") or (0, GENESIS)
        head = self._state(db, "head")
        last_id, n = anchor_id, 0

        def bad(row_id: int, reason: str) -> VerifyResult:
            return VerifyResult(False, n, row_id, reason, anchor_id, last_id or None)

        sql = f"SELECT {self._read_columns} FROM audit WHERE id <= ? ORDER BY id"
        for row in db.execute(sql, (upto if upto is not None else 2**62,)):
            row_id, stored_prev, stored_hash = row[0], row[-2], row[-1]
            if row_id <= anchor_id:
                return bad(row_id, f"row {row_id} is older than the prune anchor (row {anchor_id})")
            if row_id != last_id + 1:
                gap = f"{last_id + 1}" if row_id == last_id + 2 else f"{last_id + 1}–{row_id - 1}"
                return bad(last_id + 1, f"row {gap} missing: deleted from the middle")
            if stored_prev != prev:
                return bad(row_id, "prev_hash does not match the previous row's hash")
            if not self._row_matches(prev, row[:-2], stored_hash):
                return bad(row_id, "row hash mismatch: a field or the content was changed")
            last_id, prev, n = row_id, stored_hash, n + 1
        if upto is None and head is not None and head != (last_id, prev):
            if head[0] > last_id:
                return bad(last_id + 1, f"rows {last_id + 1}–{head[0]} deleted from the end")
            return bad(head[0] + 1, "rows after the head checkpoint were not written by nobusy")
        if upto is None and head is None and n:
            return bad(last_id, "the head checkpoint is missing")
        return VerifyResult(True, n, None, "intact", anchor_id, last_id or None)

    def export(self, since: datetime, decrypt: bool = False) -> Iterator[dict[str, Any]]:
        """Rows from ``since`` on, oldest first; content decrypted, base64 of its token, or None."""
        with self._read() as db:
            sql = f"SELECT {self._read_columns} FROM audit WHERE time >= ? ORDER BY id"
            for row in db.execute(sql, (_time_text(since),)):
                record = dict(zip(_CHAIN_COLUMNS.split(", "), row, strict=True))
                token = record["content"]
                if token is not None:
                    record["content"] = (
                        orjson.loads(self.suite.decrypt(token, _aad(record["id"])))
                        if decrypt
                        else base64.b64encode(token).decode()
                    )
                yield record

    def events(
        self, request_id: str, since: datetime, until: datetime, *, decrypt: bool
    ) -> list[dict[str, Any]]:
        """The rows of one request written between ``since`` and ``until``, oldest first;
        content decrypted when ``decrypt`` and kept (``store: full``), else None. The time
        range is what the index finds: ``request_id`` has no index of its own."""
        with self._read() as db:
            sql = (
                f"SELECT {self._read_columns} FROM audit WHERE time >= ? AND time <= ? "
                "AND request_id = ? ORDER BY id"
            )
            rows = db.execute(sql, (_time_text(since), _time_text(until), request_id))
            out = []
            for row in rows:
                record = dict(zip(_CHAIN_COLUMNS.split(", "), row, strict=True))
                token = record.pop("content")
                record["content"] = (
                    orjson.loads(self.suite.decrypt(bytes(token), _aad(record["id"])))
                    if decrypt and token is not None
                    else None
                )
                out.append(record)
            return out

    def hits(self, since: datetime, until: datetime) -> dict[str, dict[str, int]]:
        """Per request id, its guard and PII events (every event but the request and the
        response) written between ``since`` and ``until``, counted by kind."""
        with self._read() as db:
            rows = db.execute(
                "SELECT request_id, event, COUNT(*) FROM audit WHERE time >= ? AND time <= ? "
                "AND event NOT IN ('request', 'response') GROUP BY request_id, event",
                (_time_text(since), _time_text(until)),
            )
            out: dict[str, dict[str, int]] = {}
            for request_id, event, n in rows:
                out.setdefault(request_id, {})[event] = int(n)
            return out

    def write_export(
        self, out: Path, since: datetime, *, decrypt: bool = False, sign: bool = False
    ) -> int:
        """Write ``export`` as JSON lines to ``out`` (and ``out.sig`` when signing); the rows."""
        n = 0
        with out.open("wb") as f:
            for record in self.export(since, decrypt):
                f.write(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
                n += 1
        if sign:
            # Signed in memory (SM2 and pure Ed25519 both need the whole message).
            signature = self.suite.sign(out.read_bytes())
            out.with_name(out.name + ".sig").write_bytes(signature)
        return n

    def prune(self, now: datetime | None = None) -> int:
        """Remove rows older than ``retention_days``, keeping the chain verifiable; the count."""
        cutoff = _time_text((now or datetime.now(UTC)) - timedelta(days=self.retention_days))
        with self._write_lock:
            if self._writer.closed:
                return 0  # shutting down: the next start prunes
            with self._transaction() as db:
                # A prefix only: a row newer than the cutoff may precede an older one (workers).
                first_kept = db.execute(
                    "SELECT MIN(id) FROM audit WHERE time >= ?", (cutoff,)
                ).fetchone()[0]
                upto = first_kept - 1 if first_kept else db.execute(
                    "SELECT MAX(id) FROM audit").fetchone()[0]  # fmt: skip
                anchor_id = (self._state(db, "anchor") or (0, GENESIS))[0]
                if upto is None or upto <= anchor_id:
                    return 0
                checked = self._walk(db, upto)  # never erase the evidence of tampering
                if not checked.ok:
                    raise AuditError(f"not pruning a broken chain: {checked.reason}")
                row_hash = db.execute("SELECT row_hash FROM audit WHERE id = ?", (upto,))
                self._set_state(db, "anchor", upto, row_hash.fetchone()[0])
                self._unguard(db)
                removed = db.execute("DELETE FROM audit WHERE id <= ?", (upto,)).rowcount
                self._reguard(db)
                return int(removed)


def verify_export(export: Path, signature: Path, public_key: Path) -> bool:
    """Whether ``signature`` (SM2 or Ed25519, by the key) is ``export``'s, byte for byte."""
    return verify_signature(public_key.read_bytes(), export.read_bytes(), signature.read_bytes())


def _aad(row_id: int) -> bytes:
    # Binds a token to its row: a ciphertext moved to another row no longer decrypts.
    return b"nobusy-audit/%d" % row_id


def _time_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
