"""nobusy's SQLite database, ``data_dir/nobusy.db``: one file for keys and usage, migrated forward.

Migrations are decorated functions applied in order and recorded in ``_sqlite_migrations``
(sqlite-utils' ``Migrations``); they are never edited or renamed once released, only added.
Timestamps are UTC text in SQLite's own ``YYYY-MM-DD HH:MM:SS`` form, so they read well in the
``sqlite3`` shell and compare correctly with ``datetime('now', '-1 day')``.

What nobusy writes is its own: ``private_dir`` makes the data directory 0700 and
``private_file`` a database 0600 (SQLite gives its -wal and -shm files the database's mode),
created so and tightened when found looser.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from nobusy.errors import ConfigError

__all__ = [
    "DB_NAME",
    "migrations",
    "open_db",
    "parse_timestamp",
    "private_dir",
    "private_file",
    "timestamp",
]

log = logging.getLogger("nobusy")

DB_NAME = "nobusy.db"
BUSY_TIMEOUT_MS = 5000

migrations = Migrations("nobusy")


@migrations()
def m001_keys(db: Database) -> None:
    db.execute("""
        CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            priority TEXT NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
            rpm INTEGER,
            tpm INTEGER,
            max_concurrency INTEGER,
            quota_tokens INTEGER,
            balance INTEGER,
            models TEXT,
            max_wait REAL,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            revoked_at TEXT,
            last_used_at TEXT
        )
    """)


@migrations()
def m002_usage(db: Database) -> None:
    # key_id is NULL while no keys exist; keys are revoked, never deleted, so it stays valid.
    db.execute("""
        CREATE TABLE usage (
            id INTEGER PRIMARY KEY,
            time TEXT NOT NULL,
            request_id TEXT NOT NULL,
            key_id TEXT REFERENCES keys(id),
            alias TEXT NOT NULL,
            upstream TEXT,
            tried TEXT NOT NULL DEFAULT '[]',
            stream INTEGER NOT NULL DEFAULT 0,
            outcome TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            ttft_ms REAL,
            queue_ms REAL,
            duration_ms REAL,
            overflow INTEGER NOT NULL DEFAULT 0
        )
    """)
    db.execute("CREATE INDEX usage_key_time ON usage (key_id, time)")
    db.execute("CREATE INDEX usage_time ON usage (time)")


@migrations()
def m003_usage_notes(db: Database) -> None:
    # Failover notes (continuations) as a JSON list, like `tried`.
    db.execute("ALTER TABLE usage ADD COLUMN notes TEXT NOT NULL DEFAULT '[]'")


@migrations()
def m004_key_windows(db: Database) -> None:
    # Per-key request/token windows and requests in flight, shared by worker processes.
    db.execute(
        "CREATE TABLE key_window (id INTEGER PRIMARY KEY, key_id TEXT NOT NULL, "
        "at REAL NOT NULL, requests INTEGER NOT NULL, tokens INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX key_window_key_at ON key_window (key_id, at)")
    db.execute(
        "CREATE TABLE key_in_flight (key_id TEXT NOT NULL, pid INTEGER NOT NULL, "
        "n INTEGER NOT NULL, PRIMARY KEY (key_id, pid))"
    )


@migrations()
def m005_key_names_reusable(db: Database) -> None:
    # A revoked key's name may be given to a new key: names are unique among keys not
    # revoked. SQLite cannot drop a column's UNIQUE, so the table is rebuilt (usage rows
    # refer to keys by id, which is kept).
    columns = (
        "id, name, prefix, hash, priority, rpm, tpm, max_concurrency, quota_tokens, balance, "
        "models, max_wait, created_at, expires_at, revoked_at, last_used_at"
    )
    db.execute("""
        CREATE TABLE keys_new (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            priority TEXT NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
            rpm INTEGER,
            tpm INTEGER,
            max_concurrency INTEGER,
            quota_tokens INTEGER,
            balance INTEGER,
            models TEXT,
            max_wait REAL,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            revoked_at TEXT,
            last_used_at TEXT
        )
    """)
    db.execute(f"INSERT INTO keys_new ({columns}) SELECT {columns} FROM keys ORDER BY rowid")
    db.execute("DROP TABLE keys")
    db.execute("ALTER TABLE keys_new RENAME TO keys")
    db.execute("CREATE UNIQUE INDEX keys_active_name ON keys (name) WHERE revoked_at IS NULL")


def open_db(data_dir: Path) -> Database:
    """Open (creating it if needed) ``data_dir/nobusy.db`` in WAL mode and apply migrations.

    Raises ConfigError naming the file when it cannot be opened, created or migrated.
    """
    path = data_dir / DB_NAME
    try:
        private_dir(data_dir)
        private_file(path)
        return _open(path)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot open the database {path}: {reason}") from None


def private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) with mode 0700, or tighten it to 0700 if it is ours."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing (SQLite takes an empty file for a new
    database); tighten it and its -wal and -shm files to 0600 if they are looser."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        _tighten(each, 0o600)


def _tighten(path: Path, mode: int) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.geteuid():
        log.info("tightening %s to %o: only nobusy's user may read it", path, mode)
        path.chmod(stat.S_IMODE(info.st_mode) & mode)


def _open(path: Path) -> Database:
    # check_same_thread=False: the server writes from a thread pool; callers serialise access.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # WAL: readers (the server's cache) never wait for a writer (the CLI), and vice versa.
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable against application crashes in WAL mode; only a power cut can
        # lose the last commits, which costs far less than an fsync per usage record.
        conn.execute("PRAGMA synchronous = NORMAL")
        db = Database(conn, execute_plugins=False)
        # Several workers start at once: BEGIN IMMEDIATE makes the others wait, then find the
        # migrations applied, instead of racing to create the same tables.
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(db)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
    except BaseException:
        conn.close()
        raise
    return db


def timestamp(moment: datetime) -> str:
    """``moment`` as UTC text in SQLite's format, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def parse_timestamp(text: str | None) -> datetime | None:
    """The aware UTC datetime stored by ``timestamp``, or None."""
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)
