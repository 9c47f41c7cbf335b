"""The knowledge base's records and uploaded bytes in PostgreSQL, shared by every replica.

``PgKnowledgeStore`` is ``KnowledgeStore``'s logic and statements over the ``kb_*`` tables of
migration ``m009_knowledge`` (made in PostgreSQL then, column for column); the few statements
SQLite words its own way are written again here: null-safe equality (SQLite's ``IS ?`` is
``IS NOT DISTINCT FROM``), ``INSERT OR REPLACE``, and ``rowid`` order. Ingestion claims take
the row's lock (``FOR UPDATE SKIP LOCKED``): of two replicas claiming one file, one gets it and
the other moves on without waiting. ``PgBlobs`` keeps each uploaded file's bytes in
``kb_blobs`` (``m014_knowledge_shared``) in parts of 1 MiB: a replica reads a file another
received, and an upload is written in one transaction, so a crash leaves no half file.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO

import orjson
import psycopg

from nobusy.knowledge.claims import Claim
from nobusy.store.knowledge import KnowledgeStore, StoreFile
from nobusy.store.pg_migrations import migrated
from nobusy.store.postgres import Qmark, translated

__all__ = ["PART_BYTES", "PgBlobs", "PgKnowledgeStore"]

PART_BYTES = 1024 * 1024
_ID = re.compile(r"file-[0-9a-f]{24}")
# SQLite's null-safe equality (``owner IS ?``); the shared statements use it for nothing else.
_IS = re.compile(r"\bIS \?")


class _Dialect(Qmark):
    """A connection taking the shared statements' SQLite words."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return super().execute(_IS.sub("IS NOT DISTINCT FROM ?", sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        super().executemany(_IS.sub("IS NOT DISTINCT FROM ?", sql), rows)


class PgKnowledgeStore(KnowledgeStore):
    """The ``kb_*`` tables of the PostgreSQL at ``url`` (migrated on open); thread-safe."""

    _OLDEST = "created_at, file_id"

    def __init__(self, url: str) -> None:  # no SQLite file: the parent's is not called
        self._url = url
        self._lock = threading.Lock()
        self._link = migrated(url)

    def close(self) -> None:
        with self._lock:
            self._link.close()

    def attach(
        self,
        store_id: str,
        file_id: str,
        attributes: dict[str, Any],
        chunking: dict[str, Any] | None,
        batch_id: str | None = None,
    ) -> StoreFile:
        now = int(time.time())
        with self._write() as conn:
            conn.execute(
                "INSERT INTO kb_store_files (store_id, file_id, batch_id, status, last_error, "
                "attributes, chunking, usage_bytes, chunks, created_at, claimed_by, claimed_at, "
                "claims) VALUES (?, ?, ?, 'in_progress', NULL, ?, ?, 0, 0, ?, NULL, NULL, 0) "
                "ON CONFLICT (store_id, file_id) DO UPDATE SET batch_id = excluded.batch_id, "
                "status = excluded.status, last_error = NULL, attributes = excluded.attributes, "
                "chunking = excluded.chunking, usage_bytes = 0, chunks = 0, "
                "created_at = excluded.created_at, claimed_by = NULL, claimed_at = NULL, "
                "claims = 0",
                (store_id, file_id, batch_id, _json(attributes), _json_or_none(chunking), now),
            )
            conn.execute("UPDATE kb_stores SET last_active_at = ? WHERE id = ?", (now, store_id))
        found = self.store_file(store_id, file_id)
        assert found is not None
        return found

    def claim(self, store_id: str, file_id: str, me: str, now: float | None = None) -> bool:
        """Take a file in progress for worker ``me`` under the row's lock; False when another
        worker holds it, is claiming it this instant, or it is no longer in progress."""
        now = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute(
                "SELECT claimed_by, claimed_at FROM kb_store_files WHERE store_id = ? AND "
                "file_id = ? AND status = 'in_progress' FOR UPDATE SKIP LOCKED",
                (store_id, file_id),
            ).fetchone()
            if row is None or not Claim(row[0], row[1]).void(me, now):
                return False
            conn.execute(
                "UPDATE kb_store_files SET claimed_by = ?, claimed_at = ?, claims = claims + 1 "
                "WHERE store_id = ? AND file_id = ?",
                (me, now, store_id, file_id),
            )
        return True

    # --- SQL --------------------------------------------------------------------------------------

    def _one(self, sql: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
        with self._using() as conn:
            row: tuple[Any, ...] | None = conn.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._using() as conn:
            return list(conn.execute(sql, args).fetchall())

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._using() as conn, conn.conn.transaction():
            yield conn

    @contextmanager
    def _using(self) -> Iterator[Any]:
        with self._lock, translated(self._url, "knowledge base"):
            # Checked: the first call after a PostgreSQL restart must not fail.
            yield _Dialect(self._link.get(check=True).conn)


class PgBlobs:
    """Uploaded files' bytes in ``kb_blobs``, the same methods as ``Blobs``; thread-safe."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._link = migrated(url)

    def close(self) -> None:
        with self._lock:
            self._link.close()

    def write(self, file_id: str, source: BinaryIO) -> tuple[int, str]:
        """Copy ``source`` into the file's parts (one transaction); its size and SHA-256."""
        _check(file_id)
        digest, size = hashlib.sha256(), 0
        with self._using() as conn, conn.transaction():
            conn.execute("DELETE FROM kb_blobs WHERE file_id = %s", (file_id,))
            part = 0
            # At least one part, empty for an empty file: "no rows" means "no such file".
            while (block := source.read(PART_BYTES)) or part == 0:
                conn.execute(
                    "INSERT INTO kb_blobs (file_id, part, content) VALUES (%s, %s, %s)",
                    (file_id, part, block),
                )
                digest.update(block)
                size += len(block)
                part += 1
                if not block:
                    break
        return size, digest.hexdigest()

    def read(self, file_id: str) -> bytes:
        """The file's bytes; FileNotFoundError when no replica stored them."""
        _check(file_id)
        with self._using() as conn:
            rows = conn.execute(
                "SELECT content FROM kb_blobs WHERE file_id = %s ORDER BY part", (file_id,)
            ).fetchall()
        if not rows:
            raise FileNotFoundError(file_id)
        return b"".join(bytes(row[0]) for row in rows)

    def delete(self, file_id: str) -> None:
        _check(file_id)
        with self._using() as conn:
            conn.execute("DELETE FROM kb_blobs WHERE file_id = %s", (file_id,))

    @contextmanager
    def _using(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock, translated(self._url, "knowledge base's files"):
            yield self._link.get(check=True).conn


def _check(file_id: str) -> None:
    if not _ID.fullmatch(file_id):  # ids come from requests: checked as Blobs checks them
        raise ValueError(f"not a file id: {file_id!r}")


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _json_or_none(value: Any) -> str | None:
    return None if value is None else _json(value)
