"""The PostgreSQL that ``store`` names: connections, its health, and its errors in nobusy's terms.

psycopg's errors enter nobusy here and in the ``pg_*`` backends, which catch ``ERRORS`` and
turn them into ``StorageUnavailable`` (``translated``), ``ConfigError`` at start
(``startup_error``), or a spill to a local file (``nobusy.store.spill``) while ``Liveness``
says it is down. A URL's password never
leaves in text: messages name the URL through ``redact`` and pass the server's words through
``scrub`` (the same rules as Redis URLs). ``Qmark`` lets the SQL shared with the SQLite
backends keep its ``?`` placeholders.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.conninfo import conninfo_to_dict

from nobusy.errors import ConfigError, StorageUnavailable
from nobusy.settings import Settings
from nobusy.store.health import Health
from nobusy.store.redis_client import redact, scrub

__all__ = [
    "DOWN",
    "ERRORS",
    "Link",
    "Liveness",
    "Qmark",
    "connect",
    "probe",
    "redact",
    "scrub",
    "startup_error",
    "translated",
    "vector_text",
]

log = logging.getLogger("nobusy")

ERRORS: tuple[type[BaseException], ...] = (psycopg.Error, OSError)
# PostgreSQL did not answer (down, restarting, unreachable), as opposed to refusing a statement.
DOWN: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError, OSError)
CONNECT_TIMEOUT = 3  # seconds; libpq counts whole seconds (at least 2)


def connect(url: str, *, timeout: int = CONNECT_TIMEOUT) -> psycopg.Connection[Any]:
    """A connection in autocommit mode (transactions are explicit: ``conn.transaction()``)."""
    return psycopg.connect(url, autocommit=True, connect_timeout=timeout, application_name="nobusy")


class Qmark:
    """A psycopg connection that takes SQLite's ``?`` placeholders, so the statements shared
    with the SQLite backends are written once (none of them holds a literal ``?`` or ``%``)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(_pg(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg(sql), rows)

    def close(self) -> None:
        self.conn.close()


class Link:
    """One connection to ``url``, opened again when PostgreSQL closed it (a restart, a
    network cut); for one thread at a time (its owner serialises)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self.reused = False  # whether ``get`` last returned a connection opened before

    def get(self, check: bool = False) -> Qmark:
        """The connection, reconnecting if it is closed or broken (with ``check``, also if it
        does not answer a ``SELECT 1``: a restarted PostgreSQL closed it unseen); psycopg
        errors if it cannot."""
        if self._conn is not None and not (self._conn.closed or self._conn.broken) and check:
            try:
                self._conn.execute("SELECT 1")
            except DOWN:
                pass  # now broken: opened again below
        self.reused = not (self._conn is None or self._conn.closed or self._conn.broken)
        if not self.reused:
            if self._conn is not None:
                self._conn.close()
            self._conn = connect(self.url)
        assert self._conn is not None
        return Qmark(self._conn)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _pg(sql: str) -> bytes:
    return sql.replace("?", "%s").encode()


@contextmanager
def translated(url: str, what: str) -> Iterator[None]:
    """psycopg's errors as StorageUnavailable naming ``what`` and the redacted URL."""
    try:
        yield
    except ERRORS as exc:
        raise StorageUnavailable(
            f"The {what} in PostgreSQL at {redact(url)} is unavailable: "
            f"{scrub(_first_line(exc), url)}."
        ) from None


def startup_error(exc: BaseException, url: str, migrating: bool = False) -> ConfigError:
    """What to check when PostgreSQL at ``url`` cannot be used at start, as a ConfigError."""
    shown, words = redact(url), scrub(_first_line(exc), url)
    if isinstance(exc, psycopg.errors.InsufficientPrivilege) or (
        migrating and isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)
    ):
        return ConfigError(
            f"PostgreSQL at {shown} does not let nobusy's role create its tables ({words}): "
            "grant it CREATE on the database's schema (GRANT CREATE ON SCHEMA public TO "
            "<role>), or start nobusy once with a role that may, so the migrations are applied"
        )
    if isinstance(exc, psycopg.errors.FeatureNotSupported):
        return ConfigError(f"PostgreSQL at {shown} lacks what nobusy needs: {words}")
    if isinstance(exc, psycopg.ProgrammingError) and not isinstance(exc, psycopg.OperationalError):
        return ConfigError(f"store: {shown} is not a PostgreSQL URL nobusy can use ({words})")
    if _listening(url):
        # The server answered but refused: libpq gives no code for it, only words.
        return ConfigError(
            f"PostgreSQL at {shown} refused nobusy ({words}): check the user, password and "
            "database name in store (NOBUSY_STORE), and pg_hba.conf for this host"
        )
    return ConfigError(
        f"cannot reach PostgreSQL at {shown} ({words}): check that it runs there and accepts "
        "connections from this host (listen_addresses, pg_hba.conf, firewall)"
    )


def _listening(url: str) -> bool:
    """Whether something accepts TCP connections at the URL's first host and port."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return False
    host = str(info.get("host") or "").split(",")[0]
    port = str(info.get("port") or "5432").split(",")[0]
    if not host or host.startswith("/") or not (port.isascii() and port.isdigit()):
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].removeprefix("connection failed: ")


class Liveness:
    """Whether PostgreSQL answers, as the backends using it last found: a ``Watched`` for
    ``/readyz``, the status board and ``/metrics`` (no I/O); each change logged once."""

    def __init__(self, url: str) -> None:
        self.url = url  # redacted
        self.ok = True
        self.detail = "answers"
        self.since: float | None = None
        self._lock = threading.Lock()

    def health(self) -> Health:
        if self.ok:
            return Health("postgresql", self.url, "ok", "keys, usage and audit", self.since)
        detail = f"does not answer ({self.detail}): keys from memory, usage and audit spilled"
        return Health("postgresql", self.url, "degraded", detail, self.since)

    def down(self, exc: BaseException, raw_url: str, doing: str) -> None:
        """Mark it down; the first time, log what failed and what happens meanwhile."""
        with self._lock:
            was, self.ok = self.ok, False
            self.detail = f"{doing}: {scrub(_first_line(exc), raw_url)}"
            if was:
                self.since = time.time()
        if was:
            log.error(
                "PostgreSQL at %s is down (%s): serving keys from memory, spilling usage and "
                "audit rows to the data dir until it answers",
                self.url,
                self.detail,
            )

    def up(self) -> None:
        with self._lock:
            was, self.ok, self.detail = self.ok, True, "answers"
            if not was:
                self.since = time.time()
        if not was:
            log.warning("PostgreSQL at %s answers again", self.url)


def probe(settings: Settings) -> Health | None:
    """``nobusy check``: does the PostgreSQL of ``store`` answer, which version, are nobusy's
    migrations applied (None without ``store``)."""
    if settings.store is None:
        return None
    url = settings.store.get_secret_value()
    shown = redact(url)
    started = time.perf_counter()
    try:
        with connect(url, timeout=2) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            table = conn.execute("SELECT to_regclass('nobusy_migrations')").fetchone()
    except ERRORS as exc:
        return Health("postgresql", shown, "down", startup_error(exc, url).message)
    latency = (time.perf_counter() - started) * 1000
    migrated = "migrated" if table and table[0] else "not migrated yet (nobusy serve does it)"
    detail = f"PostgreSQL {version[0] if version else '?'}, {migrated}"
    return Health("postgresql", shown, "ok", detail, latency_ms=latency)


def vector_text(vector: npt.NDArray[np.float32]) -> str:
    """pgvector's text form of ``vector`` (no client-side type to register)."""
    return "[" + ",".join(map(repr, vector.tolist())) + "]"
