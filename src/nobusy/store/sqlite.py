"""SQLite as nobusy uses it: private files, WAL connections, one transaction helper, timestamps.

What nobusy writes is its own: ``private_dir`` makes the data directory 0700 and
``private_file`` a database 0600 (SQLite gives its -wal and -shm files the database's mode),
created so and tightened when found looser. Timestamps are UTC text in SQLite's own
``YYYY-MM-DD HH:MM:SS`` form, so they read well in the ``sqlite3`` shell and compare correctly
with ``datetime('now', '-1 day')``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "BUSY_TIMEOUT_MS",
    "connect",
    "parse_timestamp",
    "private_dir",
    "private_file",
    "read_only",
    "timestamp",
    "transaction",
]

log = logging.getLogger("nobusy")

BUSY_TIMEOUT_MS = 5000


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` when the block raises anything.

    IMMEDIATE takes the write lock first, so what the block reads and what it writes see the
    same rows, and a second writer (another worker, the CLI) waits at BEGIN, not midway.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.commit()
    except BaseException:
        if conn.in_transaction:  # not when the error already ended it (or COMMIT did)
            conn.rollback()
        raise


def connect(
    path: Path, *, autocommit: bool = False, busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """A write connection to ``path`` in WAL mode with ``synchronous=NORMAL``.

    ``autocommit``: no implicit BEGIN before a write (Python's ``isolation_level=None``).
    ``check_same_thread=False``: writer threads and thread pools use it; callers serialise.
    """
    conn = sqlite3.connect(
        path,
        timeout=busy_timeout_ms / 1000,
        isolation_level=None if autocommit else "DEFERRED",
        check_same_thread=False,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        # WAL: readers (the server's cache) never wait for a writer (the CLI), and vice versa.
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable against application crashes in WAL mode; only a power cut can
        # lose the last commits, which costs far less than an fsync per row.
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def read_only(path: Path, *, timeout: float = 5.0) -> sqlite3.Connection:
    """A connection that can never take a write lock (reports, verification)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)


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


def timestamp(moment: datetime) -> str:
    """``moment`` as UTC text in SQLite's format, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def parse_timestamp(text: str | None) -> datetime | None:
    """The aware UTC datetime stored by ``timestamp``, or None."""
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)
