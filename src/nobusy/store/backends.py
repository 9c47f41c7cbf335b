"""Where keys, usage, audit and the knowledge base live: SQLite in ``data_dir``, or the
PostgreSQL ``store`` names.

The server (``nobusy.app``, ``nobusy.state``) and every CLI command that reads or writes them
open them here, so each finds the same data. The PostgreSQL modules are imported only when
``store`` is set: the default needs no psycopg at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nobusy.settings import Settings
from nobusy.store.audit import AuditLog
from nobusy.store.interfaces import ResponsesStore
from nobusy.store.keys import KeyStore
from nobusy.store.migrations import DB_NAME, open_db
from nobusy.store.money_holds import MoneyHolds
from nobusy.store.responses import ResponseStore
from nobusy.store.usage import UsageLog, key_usage, key_usage_rows

if TYPE_CHECKING:
    from nobusy.crypto import CryptoSuite
    from nobusy.keys import Hasher
    from nobusy.store.interfaces import ChunkIndex, FileBytes
    from nobusy.store.knowledge import KnowledgeStore
    from nobusy.store.postgres import Liveness

__all__ = [
    "describe",
    "liveness",
    "open_audit",
    "open_holds",
    "open_blobs",
    "open_index",
    "open_keys",
    "open_knowledge",
    "open_responses",
    "open_usage",
    "reading",
    "usage_by_key",
]


def describe(settings: Settings) -> str:
    """Where the keys and usage are, for messages: a file, or a URL without its password."""
    if settings.store is None:
        return str((settings.data_dir / DB_NAME).resolve())
    from nobusy.store.postgres import redact

    return f"PostgreSQL at {redact(settings.store.get_secret_value())}"


def open_keys(settings: Settings, hashers: tuple[Hasher, ...]) -> KeyStore:
    """The key store; ConfigError when its database cannot be opened or migrated."""
    if settings.store is None:
        return KeyStore(settings.data_dir, hashers)
    from nobusy.store.pg_keys import PgKeyStore

    return PgKeyStore(settings.store.get_secret_value(), hashers)


def open_holds(settings: Settings) -> MoneyHolds:
    """Where requests hold money against budgets: the database the keys are in."""
    pricing = settings.pricing
    if settings.store is None:
        return MoneyHolds(settings.data_dir, pricing.currency, pricing.hold_ttl)
    from nobusy.store.pg_money_holds import PgMoneyHolds

    return PgMoneyHolds(settings.store.get_secret_value(), pricing.currency, pricing.hold_ttl)


def liveness(keys: KeyStore) -> Liveness | None:
    """Whether PostgreSQL answers, as the key store and the logs find it; None for SQLite."""
    found: Liveness | None = getattr(keys, "liveness", None)
    return found


def open_usage(settings: Settings, keys: KeyStore) -> UsageLog:
    """The usage log (its writer thread started), sharing ``keys``'s ``Liveness``."""
    if settings.store is None:
        return UsageLog(settings.data_dir)
    from nobusy.store.pg_usage import PgUsageLog

    return PgUsageLog(settings.store.get_secret_value(), settings.data_dir, liveness=liveness(keys))


def open_audit(
    settings: Settings, suite: CryptoSuite, keys: KeyStore | None = None, *, serving: bool = False
) -> AuditLog:
    """The audit log with the configured store and retention; ``serving`` opens its spill
    file too (replaying what a stopped process left there)."""
    audit = settings.audit
    if settings.store is None:
        return AuditLog(settings.data_dir, suite, audit.store, audit.retention_days)
    from nobusy.store.pg_audit import PgAuditLog

    log = PgAuditLog(
        settings.store.get_secret_value(),
        settings.data_dir,
        suite,
        audit.store,
        audit.retention_days,
        liveness=None if keys is None else liveness(keys),
    )
    if serving:
        log.open_spill()
    return log


def open_responses(settings: Settings) -> ResponsesStore:
    """The Responses API's kept responses: this host's ``nobusy.db``, or with ``store`` the
    PostgreSQL every replica shares."""
    if settings.store is None:
        return ResponseStore(settings.data_dir, settings.responses_ttl)
    from nobusy.store.pg_responses import PgResponseStore

    return PgResponseStore(settings.store.get_secret_value(), settings.responses_ttl)


def open_knowledge(settings: Settings) -> KnowledgeStore:
    """The knowledge base's records: this host's ``nobusy.db``, or the shared PostgreSQL."""
    if settings.store is None:
        from nobusy.store.knowledge import KnowledgeStore

        return KnowledgeStore(settings.data_dir)
    from nobusy.store.pg_knowledge import PgKnowledgeStore

    return PgKnowledgeStore(settings.store.get_secret_value())


def open_blobs(settings: Settings) -> FileBytes:
    """Uploaded files' bytes: ``data_dir/files``, or the shared PostgreSQL (a file uploaded
    to one replica is read by any other)."""
    if settings.store is None:
        from nobusy.store.blobs import Blobs

        return Blobs(settings.data_dir / "files")
    from nobusy.store.pg_knowledge import PgBlobs

    return PgBlobs(settings.store.get_secret_value())


def open_index(settings: Settings, model: str) -> ChunkIndex:
    """The search index of ``model``'s stores: ``data_dir/knowledge.db``, or the shared
    PostgreSQL (pgvector)."""
    dictionary = settings.knowledge.dictionary
    if settings.store is None:
        from nobusy.knowledge.index import INDEX_FILE, Index

        return Index(settings.data_dir / INDEX_FILE, model, dictionary=dictionary)
    from nobusy.knowledge.pg_index import PgIndex

    return PgIndex(settings.store.get_secret_value(), model, dictionary=dictionary)


@contextmanager
def reading(settings: Settings) -> Iterator[Any]:
    """A connection for reports (``nobusy usage``), taking ``?`` placeholders; ConfigError
    when the database cannot be opened."""
    if settings.store is None:
        db = open_db(settings.data_dir)
        try:
            yield db.conn
        finally:
            db.close()
        return
    from nobusy.store.pg_migrations import migrate
    from nobusy.store.postgres import ERRORS, Qmark, connect, startup_error

    url = settings.store.get_secret_value()
    try:
        conn = Qmark(connect(url))
    except ERRORS as exc:
        raise startup_error(exc, url, migrating=True) from None
    with closing(conn):
        try:
            migrate(conn.conn, *_sets())
        except ERRORS as exc:
            raise startup_error(exc, url, migrating=True) from None
        yield conn


def usage_by_key(settings: Settings, since: datetime) -> list[dict[str, Any]]:
    """Requests and tokens per key since ``since`` (the status board); [] when unreadable."""
    if settings.store is None:
        return key_usage(settings.data_dir, since)
    from nobusy.store.postgres import ERRORS, Qmark, connect

    try:
        with closing(Qmark(connect(settings.store.get_secret_value(), timeout=2))) as conn:
            return key_usage_rows(conn, since)
    except ERRORS:  # down: the board shows PostgreSQL's health, and no usage this beat
        return []


def _sets() -> tuple[Any, ...]:
    from nobusy.store.migrations import AUDIT, NOBUSY

    return NOBUSY, AUDIT
