"""The console's sign-in sessions: the admin key exchanged for a random token kept in a cookie.

Only the token's SHA-256 is stored (``console_sessions`` in ``nobusy.db``), with its expiry, so
a copy of the database signs nobody in; signing out deletes the row, which every worker of the
host sees at its next request. Sessions are this host's (as the Responses API's kept
responses are): behind a balancer of several hosts, sign in on each, or make it sticky.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from nobusy.errors import StorageUnavailable
from nobusy.store.migrations import DB_NAME, open_db
from nobusy.store.sqlite import timestamp, transaction

__all__ = ["SessionStore"]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Create, check and revoke sessions; calls are short and run on a worker thread."""

    def __init__(self, data_dir: Path) -> None:
        self._db = open_db(data_dir)
        self._conn = self._db.conn
        self._conn.execute("PRAGMA busy_timeout = 2000")
        self._lock = threading.Lock()  # one connection, used from the thread pool
        # Checks run on the event loop, on every admin request: a read connection of their
        # own, which in WAL mode never waits for a writer (nor for the lock above).
        uri = f"{(data_dir / DB_NAME).resolve().as_uri()}?mode=ro"
        self._reader = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self._read_lock = threading.Lock()

    def create(self, ttl: float, client: str, now: float | None = None) -> str:
        """A new session's token, valid for ``ttl`` seconds; expired sessions are dropped."""
        token = secrets.token_urlsafe(32)
        now = time.time() if now is None else now
        try:
            with self._lock, transaction(self._conn) as conn:
                conn.execute("DELETE FROM console_sessions WHERE expires <= ?", (now,))
                conn.execute(
                    "INSERT INTO console_sessions VALUES (?, ?, ?, ?)",
                    (_hash(token), timestamp(datetime.fromtimestamp(now, UTC)), now + ttl, client),
                )
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"cannot record the session: {exc}") from None
        return token

    def valid(self, token: str, now: float | None = None) -> bool:
        """Whether ``token`` names a session not expired or revoked."""
        now = time.time() if now is None else now
        try:
            with self._read_lock:
                row = self._reader.execute(
                    "SELECT expires FROM console_sessions WHERE token_hash = ?", (_hash(token),)
                ).fetchone()
        except sqlite3.OperationalError:
            return False
        return row is not None and row[0] > now

    def revoke(self, token: str) -> None:
        """End the session of ``token`` now (nothing if there is none)."""
        try:
            with self._lock, transaction(self._conn) as conn:
                conn.execute("DELETE FROM console_sessions WHERE token_hash = ?", (_hash(token),))
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"cannot end the session: {exc}") from None

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()
