"""``KnowledgeStore``: the knowledge base's records in ``data_dir/nobusy.db``.

Uploaded files, vector stores, the files each store holds with their ingestion status, file
batches and the stores granted to keys (migration ``m007_knowledge``). The chunks and vectors
are the index's (``nobusy.knowledge.index``), the bytes are on disk (``nobusy.knowledge.files``);
this keeps who owns what and how far ingestion got, so a restart picks up every file still
``in_progress``. Who may see a record is decided here, in the queries, from a ``Caller``: the
admin sees everything, a key what it created and the stores it was granted.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from nobusy.errors import StorageUnavailable
from nobusy.knowledge.claims import Claim
from nobusy.store.migrations import open_db
from nobusy.store.sqlite import transaction

__all__ = [
    "STATUSES",
    "Batch",
    "Caller",
    "FileRecord",
    "KnowledgeStore",
    "Page",
    "StoreFile",
    "StoreRecord",
    "new_id",
]

FileStatus = Literal["in_progress", "completed", "failed", "cancelled"]
STATUSES: tuple[FileStatus, ...] = ("in_progress", "completed", "failed", "cancelled")
Order = Literal["asc", "desc"]


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: ``file-…``, ``vs_…``, ``vsfb_…`` and 24 random hex digits."""
    return prefix + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: the admin (sees everything), a key's id, or None while no keys exist."""

    key_id: str | None
    admin: bool = False


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    owner: str | None
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: int
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class StoreRecord:
    id: str
    owner: str | None
    name: str | None
    embedding_model: str
    metadata: dict[str, Any]
    expires_after: dict[str, Any] | None
    created_at: int
    last_active_at: int


@dataclass(frozen=True, slots=True)
class StoreFile:
    store_id: str
    file_id: str
    batch_id: str | None
    status: FileStatus
    last_error: dict[str, str] | None
    attributes: dict[str, Any]
    chunking: dict[str, Any] | None
    usage_bytes: int
    chunks: int
    created_at: int


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    store_id: str
    status: str  # in_progress, completed, cancelled (the files' counts say the rest)
    created_at: int


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list, in OpenAI's cursor style: ``after`` the last id for the next."""

    data: list[Any]
    has_more: bool


_FILE = "id, owner, filename, purpose, bytes, sha256, created_at, expires_at"
# A file past its expires_at is gone for every caller, as OpenAI deletes it then.
_UNEXPIRED = "(expires_at IS NULL OR expires_at > ?)"
_STORE = "id, owner, name, embedding_model, metadata, expires_after, created_at, last_active_at"
_STORE_FILE = (
    "store_id, file_id, batch_id, status, last_error, attributes, chunking, usage_bytes, "
    "chunks, created_at"
)


class KnowledgeStore:
    """The ``kb_*`` tables of ``data_dir/nobusy.db``; safe to share between threads."""

    # Files in progress, oldest first (ties in insertion order; PostgreSQL has no rowid).
    _OLDEST = "created_at, rowid"

    def __init__(self, data_dir: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_db(data_dir)
        self._conn = self._db.conn

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- Files ----------------------------------------------------------------------------------

    def add_file(
        self,
        file_id: str,
        owner: str | None,
        filename: str,
        purpose: str,
        size: int,
        sha256: str,
        expires_after: int | None = None,
    ) -> FileRecord:
        """Record a file whose bytes are stored (``Blobs.write``) under ``file_id``; with
        ``expires_after`` (seconds), it is gone that long after its upload."""
        now = _now()
        expires_at = None if expires_after is None else now + expires_after
        record = FileRecord(file_id, owner, filename, purpose, size, sha256, now, expires_at)
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO kb_files ({_FILE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    owner,
                    filename,
                    purpose,
                    size,
                    sha256,
                    record.created_at,
                    expires_at,
                ),  # fmt: skip
            )
        return record

    def file(self, caller: Caller, file_id: str) -> FileRecord | None:
        """The file if ``caller`` may see it: the admin, or the key that uploaded it."""
        where, args = _owned(caller)
        row = self._one(
            f"SELECT {_FILE} FROM kb_files WHERE id = ? AND {where} AND {_UNEXPIRED}",
            (file_id, *args, _now()),
        )
        return None if row is None else FileRecord(*row)

    def filenames(self, file_ids: Sequence[str]) -> dict[str, str]:
        if not file_ids:
            return {}
        marks = ",".join("?" * len(file_ids))
        rows = self._all(f"SELECT id, filename FROM kb_files WHERE id IN ({marks})", file_ids)
        return {str(file_id): str(name) for file_id, name in rows}

    def files(
        self,
        caller: Caller,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10000,
        order: Order = "desc",
    ) -> Page:
        where, args = _owned(caller)
        where, args = f"{where} AND {_UNEXPIRED}", [*args, _now()]
        if purpose is not None:
            where, args = f"{where} AND purpose = ?", [*args, purpose]
        rows = self._page("kb_files", _FILE, where, args, after, limit, order)
        return Page([FileRecord(*row) for row in rows[:limit]], len(rows) > limit)

    def expired_files(self, now: int | None = None, limit: int = 100) -> list[str]:
        """Ids of files past their ``expires_at``, oldest first: the sweeper deletes them."""
        rows = self._all(
            "SELECT id FROM kb_files WHERE expires_at IS NOT NULL AND expires_at <= ? "
            "ORDER BY expires_at LIMIT ?",
            (_now() if now is None else now, limit),
        )
        return [str(row[0]) for row in rows]

    def delete_file(self, file_id: str) -> list[str]:
        """Forget a file and its place in every store; the stores it was in."""
        with self._write() as conn:
            stores = [
                str(row[0])
                for row in conn.execute(
                    "SELECT store_id FROM kb_store_files WHERE file_id = ?", (file_id,)
                )
            ]
            conn.execute("DELETE FROM kb_store_files WHERE file_id = ?", (file_id,))
            conn.execute("DELETE FROM kb_files WHERE id = ?", (file_id,))
        return stores

    # --- Vector stores --------------------------------------------------------------------------

    def create_store(
        self,
        owner: str | None,
        name: str | None,
        embedding_model: str,
        metadata: dict[str, Any],
        expires_after: dict[str, Any] | None,
    ) -> StoreRecord:
        now = _now()
        record = StoreRecord(
            new_id("vs_"), owner, name, embedding_model, metadata, expires_after, now, now
        )
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO kb_stores ({_STORE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    owner,
                    name,
                    embedding_model,
                    _json(metadata),
                    None if expires_after is None else _json(expires_after),
                    now,
                    now,
                ),  # fmt: skip
            )
        return record

    def store(self, caller: Caller, store_id: str) -> StoreRecord | None:
        """The store if ``caller`` may see it: the admin, its creator, or a key granted it."""
        where, args = _visible(caller)
        row = self._one(
            f"SELECT {_STORE} FROM kb_stores WHERE id = ? AND {where}", (store_id, *args)
        )
        return None if row is None else _store(row)

    def stores(
        self, caller: Caller, *, after: str | None = None, limit: int = 10000, order: Order = "desc"
    ) -> Page:
        where, args = _visible(caller)
        rows = self._page("kb_stores", _STORE, where, args, after, limit, order)
        return Page([_store(row) for row in rows[:limit]], len(rows) > limit)

    def store_by_name(self, caller: Caller, name: str) -> StoreRecord | None:
        """The newest visible store named ``name`` (the CLI lets people say a store's name)."""
        where, args = _visible(caller)
        row = self._one(
            f"SELECT {_STORE} FROM kb_stores WHERE name = ? AND {where} "
            "ORDER BY created_at DESC LIMIT 1",
            (name, *args),
        )
        return None if row is None else _store(row)

    def update_store(
        self,
        store_id: str,
        *,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        expires_after: dict[str, Any] | None = None,
    ) -> None:
        changes: dict[str, Any] = {"last_active_at": _now()}
        if name is not None:
            changes["name"] = name
        if metadata is not None:
            changes["metadata"] = _json(metadata)
        if expires_after is not None:
            changes["expires_after"] = _json(expires_after)
        assignments = ", ".join(f"{column} = ?" for column in changes)
        with self._write() as conn:
            conn.execute(
                f"UPDATE kb_stores SET {assignments} WHERE id = ?", (*changes.values(), store_id)
            )

    def touch(self, store_id: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE kb_stores SET last_active_at = ? WHERE id = ?", (_now(), store_id))

    def delete_store(self, store_id: str) -> None:
        """Forget a store, its files' places in it, its batches and grants (not the files)."""
        with self._write() as conn:
            for table, column in (
                ("kb_store_files", "store_id"),
                ("kb_batches", "store_id"),
                ("kb_grants", "store_id"),
                ("kb_stores", "id"),
            ):
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (store_id,))

    def counts(self, store_id: str, batch_id: str | None = None) -> dict[str, int]:
        """``file_counts``: the store's (or one batch's) files by status, and the total."""
        where, args = "store_id = ?", [store_id]
        if batch_id is not None:
            where, args = f"{where} AND batch_id = ?", [*args, batch_id]
        rows = self._all(
            f"SELECT status, count(*) FROM kb_store_files WHERE {where} GROUP BY status", args
        )
        counts = dict.fromkeys(STATUSES, 0) | {str(status): int(n) for status, n in rows}
        return {**counts, "total": sum(counts.values())}

    def usage_bytes(self, store_id: str) -> int:
        row = self._one(
            "SELECT coalesce(sum(usage_bytes), 0) FROM kb_store_files WHERE store_id = ?",
            (store_id,),
        )
        return int(row[0]) if row else 0

    # --- A store's files ------------------------------------------------------------------------

    def attach(
        self,
        store_id: str,
        file_id: str,
        attributes: dict[str, Any],
        chunking: dict[str, Any] | None,
        batch_id: str | None = None,
    ) -> StoreFile:
        """Put a file in a store, ``in_progress`` (again, if it was there: the ingestion's
        dedup adds no chunk twice)."""
        now = _now()
        with self._write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO kb_store_files ({_STORE_FILE}) "
                "VALUES (?, ?, ?, 'in_progress', NULL, ?, ?, 0, 0, ?)",
                (
                    store_id,
                    file_id,
                    batch_id,
                    _json(attributes),
                    None if chunking is None else _json(chunking),
                    now,
                ),  # fmt: skip
            )
            conn.execute("UPDATE kb_stores SET last_active_at = ? WHERE id = ?", (now, store_id))
        found = self.store_file(store_id, file_id)
        assert found is not None
        return found

    def store_file(self, store_id: str, file_id: str) -> StoreFile | None:
        row = self._one(
            f"SELECT {_STORE_FILE} FROM kb_store_files WHERE store_id = ? AND file_id = ?",
            (store_id, file_id),
        )
        return None if row is None else _store_file(row)

    def store_files(
        self,
        store_id: str,
        *,
        status: str | None = None,
        batch_id: str | None = None,
        after: str | None = None,
        limit: int = 10000,
        order: Order = "desc",
    ) -> Page:
        where, args = "store_id = ?", [store_id]
        if status is not None:
            where, args = f"{where} AND status = ?", [*args, status]
        if batch_id is not None:
            where, args = f"{where} AND batch_id = ?", [*args, batch_id]
        rows = self._page(
            "kb_store_files", _STORE_FILE, where, args, after, limit, order, id_column="file_id"
        )
        return Page([_store_file(row) for row in rows[:limit]], len(rows) > limit)

    def set_attributes(self, store_id: str, file_id: str, attributes: dict[str, Any]) -> None:
        """Replace the attributes of a file in a store."""
        with self._write() as conn:
            conn.execute(
                "UPDATE kb_store_files SET attributes = ? WHERE store_id = ? AND file_id = ?",
                (_json(attributes), store_id, file_id),
            )

    def detach(self, store_id: str, file_id: str) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM kb_store_files WHERE store_id = ? AND file_id = ?", (store_id, file_id)
            )
            return cursor.rowcount > 0

    def pending(self) -> list[tuple[str, str]]:
        """Every (store, file) still ``in_progress``, oldest first: the work to resume."""
        rows = self._all(
            "SELECT store_id, file_id FROM kb_store_files WHERE status = 'in_progress' "
            f"ORDER BY {self._OLDEST}",
            (),
        )
        return [(str(store), str(file)) for store, file in rows]

    def claimable(self, me: str, now: float | None = None) -> list[tuple[str, str]]:
        """The (store, file) pairs still ``in_progress`` that ``me`` may claim, oldest first."""
        now = time.time() if now is None else now
        rows = self._all(
            "SELECT store_id, file_id, claimed_by, claimed_at FROM kb_store_files "
            f"WHERE status = 'in_progress' ORDER BY {self._OLDEST}",
            (),
        )
        return [
            (str(store), str(file)) for store, file, by, at in rows if Claim(by, at).void(me, now)
        ]

    def claim(self, store_id: str, file_id: str, me: str, now: float | None = None) -> bool:
        """Take a file in progress for worker ``me``; False when another worker holds it (or
        it is no longer in progress). A compare-and-set: of two workers, one wins."""
        now = time.time() if now is None else now
        row = self._one(
            "SELECT claimed_by, claimed_at FROM kb_store_files WHERE store_id = ? AND "
            "file_id = ? AND status = 'in_progress'",
            (store_id, file_id),
        )
        if row is None or not Claim(row[0], row[1]).void(me, now):
            return False
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE kb_store_files SET claimed_by = ?, claimed_at = ?, claims = claims + 1 "
                "WHERE store_id = ? AND file_id = ? AND status = 'in_progress' "
                "AND claimed_by IS ? AND claimed_at IS ?",
                (me, now, store_id, file_id, row[0], row[1]),
            )
            return cursor.rowcount > 0

    def renew(self, me: str, jobs: Sequence[tuple[str, str]]) -> None:
        """Say worker ``me`` still holds ``jobs``, so their claims stay valid."""
        if not jobs:
            return
        now = time.time()
        with self._write() as conn:
            conn.executemany(
                "UPDATE kb_store_files SET claimed_at = ? WHERE store_id = ? AND file_id = ? "
                "AND claimed_by = ?",
                [(now, store_id, file_id, me) for store_id, file_id in jobs],
            )

    def release(self, me: str) -> None:
        """Give up worker ``me``'s claims (it stops; another may take the files at once)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE kb_store_files SET claimed_by = NULL, claimed_at = NULL "
                "WHERE claimed_by = ? AND status = 'in_progress'",
                (me,),
            )

    def claims(self, store_id: str, file_id: str) -> int:
        """How often a file in a store was claimed by a worker (taken up for ingestion)."""
        row = self._one(
            "SELECT claims FROM kb_store_files WHERE store_id = ? AND file_id = ?",
            (store_id, file_id),
        )
        return int(row[0]) if row else 0

    def finish(
        self,
        store_id: str,
        file_id: str,
        status: FileStatus,
        *,
        error: dict[str, str] | None = None,
        usage_bytes: int = 0,
        chunks: int = 0,
    ) -> bool:
        """Record how ingestion ended; False when the file left the store (or was cancelled)
        meanwhile, so the caller takes its chunks back out of the index."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE kb_store_files SET status = ?, last_error = ?, usage_bytes = ?, "
                "chunks = ? WHERE store_id = ? AND file_id = ? AND status = 'in_progress'",
                (
                    status,
                    None if error is None else _json(error),
                    usage_bytes,
                    chunks,
                    store_id,
                    file_id,
                ),  # fmt: skip
            )
            return cursor.rowcount > 0

    # --- Batches --------------------------------------------------------------------------------

    def create_batch(self, store_id: str) -> Batch:
        batch = Batch(new_id("vsfb_"), store_id, "in_progress", _now())
        with self._write() as conn:
            conn.execute(
                "INSERT INTO kb_batches (id, store_id, status, created_at) VALUES (?, ?, ?, ?)",
                (batch.id, store_id, batch.status, batch.created_at),
            )
        return batch

    def batch(self, store_id: str, batch_id: str) -> Batch | None:
        row = self._one(
            "SELECT id, store_id, status, created_at FROM kb_batches WHERE id = ? AND store_id = ?",
            (batch_id, store_id),
        )
        return None if row is None else Batch(*row)

    def cancel_batch(self, batch_id: str) -> list[str]:
        """Cancel a batch: its files still waiting become ``cancelled``; their ids."""
        with self._write() as conn:
            files = [
                str(row[0])
                for row in conn.execute(
                    "SELECT file_id FROM kb_store_files WHERE batch_id = ? "
                    "AND status = 'in_progress'",
                    (batch_id,),
                )
            ]
            conn.execute(
                "UPDATE kb_store_files SET status = 'cancelled' WHERE batch_id = ? "
                "AND status = 'in_progress'",
                (batch_id,),
            )
            conn.execute("UPDATE kb_batches SET status = 'cancelled' WHERE id = ?", (batch_id,))
        return files

    # --- Grants ---------------------------------------------------------------------------------

    def grant(self, key_id: str, store_ids: Sequence[str]) -> None:
        """Set the stores ``key_id`` was granted to exactly ``store_ids``."""
        with self._write() as conn:
            conn.execute("DELETE FROM kb_grants WHERE key_id = ?", (key_id,))
            conn.executemany(
                "INSERT INTO kb_grants (key_id, store_id) VALUES (?, ?)",
                [(key_id, store_id) for store_id in dict.fromkeys(store_ids)],
            )

    def grants(self, key_id: str) -> list[str]:
        rows = self._all(
            "SELECT store_id FROM kb_grants WHERE key_id = ? ORDER BY store_id", (key_id,)
        )
        return [str(row[0]) for row in rows]

    def missing_stores(self, store_ids: Sequence[str]) -> list[str]:
        """The ids among ``store_ids`` no store has."""
        if not store_ids:
            return []
        marks = ",".join("?" * len(store_ids))
        rows = self._all(f"SELECT id FROM kb_stores WHERE id IN ({marks})", store_ids)
        found = {str(row[0]) for row in rows}
        return [store_id for store_id in store_ids if store_id not in found]

    # --- SQL --------------------------------------------------------------------------------------

    def _page(
        self,
        table: str,
        columns: str,
        where: str,
        args: Sequence[Any],
        after: str | None,
        limit: int,
        order: Order,
        *,
        id_column: str = "id",
    ) -> list[tuple[Any, ...]]:
        """``limit + 1`` rows in (created_at, id) order, starting after the row ``after``."""
        direction = "DESC" if order == "desc" else "ASC"
        compare = "<" if order == "desc" else ">"
        if after is not None:
            # Row values: the same statement in SQLite and PostgreSQL.
            where = (
                f"{where} AND (created_at, {id_column}) {compare} "
                f"(SELECT created_at, {id_column} FROM {table} WHERE {id_column} = ? LIMIT 1)"
            )
            args = [*args, after]
        return self._all(
            f"SELECT {columns} FROM {table} WHERE {where} "
            f"ORDER BY created_at {direction}, {id_column} {direction} LIMIT ?",
            [*args, limit + 1],
        )

    def _one(self, sql: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
        with self._using():
            row: tuple[Any, ...] | None = self._conn.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._using():
            return list(self._conn.execute(sql, args).fetchall())

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._using(), transaction(self._conn) as conn:
            yield conn

    @contextmanager
    def _using(self) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"The knowledge base is unavailable: {exc}.") from None


def _owned(caller: Caller) -> tuple[str, list[Any]]:
    if caller.admin:
        return "1 = 1", []
    return "owner IS ?", [caller.key_id]


def _visible(caller: Caller) -> tuple[str, list[Any]]:
    if caller.admin:
        return "1 = 1", []
    if caller.key_id is None:
        return "owner IS NULL", []
    return (
        "(owner = ? OR id IN (SELECT store_id FROM kb_grants WHERE key_id = ?))",
        [caller.key_id, caller.key_id],
    )


def _store(row: tuple[Any, ...]) -> StoreRecord:
    values = list(row)
    values[4] = orjson.loads(values[4])
    values[5] = None if values[5] is None else orjson.loads(values[5])
    return StoreRecord(*values)


def _store_file(row: tuple[Any, ...]) -> StoreFile:
    values = list(row)
    values[4] = None if values[4] is None else orjson.loads(values[4])
    values[5] = orjson.loads(values[5])
    values[6] = None if values[6] is None else orjson.loads(values[6])
    return StoreFile(*values)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _now() -> int:
    return int(time.time())
