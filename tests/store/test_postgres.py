"""The PostgreSQL backends against a real PostgreSQL 18: migrations, keys, usage, audit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest

from nobusy.crypto import load_suite
from nobusy.errors import ConfigError, InvalidApiKey, KeyNameTaken, StorageUnavailable
from nobusy.settings import load_settings
from nobusy.store.audit import AuditLog
from nobusy.store.migrations import AUDIT, NOBUSY, migrate
from nobusy.store.pg_audit import PgAuditLog
from nobusy.store.pg_keys import PgKeyStore
from nobusy.store.pg_migrations import STEPS, applied
from nobusy.store.pg_migrations import migrate as pg_migrate
from nobusy.store.pg_usage import PgUsageLog
from nobusy.store.postgres import Qmark, connect, probe
from nobusy.store.usage import UsageRecord, summarize
from tests.postgres_server import PASSWORD, PostgresServer


def test_every_migration_has_a_postgresql_step_of_the_same_name() -> None:
    for migrations in (NOBUSY, AUDIT):
        names = [m.name for m in migrations._migrations]
        assert list(STEPS[migrations.name]) == names


def test_migrations_apply_once_in_order_and_are_recorded(pg_url: str, tmp_path: Path) -> None:
    with connect(pg_url) as conn:
        assert pg_migrate(conn, NOBUSY, AUDIT) == [
            *(m.name for m in NOBUSY._migrations),
            *(m.name for m in AUDIT._migrations),
        ]
        assert pg_migrate(conn, NOBUSY, AUDIT) == []
        assert applied(conn, NOBUSY) == [m.name for m in NOBUSY._migrations]
    # The same names as SQLite records for the same list.
    db = migrate(tmp_path / "n.db", NOBUSY)
    names = [r[0] for r in db.execute("SELECT name FROM _sqlite_migrations ORDER BY rowid")]
    assert names == [m.name for m in NOBUSY._migrations]
    db.close()


def test_keys_create_authenticate_revoke_through_postgresql(pg_url: str) -> None:
    store = PgKeyStore(pg_url)
    key, secret = store.create("alice", rpm=60, quota_tokens=1000)
    assert store.authenticate(secret).id == key.id
    with pytest.raises(KeyNameTaken):
        store.create("alice")
    # Another process (another replica, the CLI) sees it at once: it reads the table.
    other = PgKeyStore(pg_url)
    assert [k.name for k in other.list()] == ["alice"]
    assert other.authenticate(secret).rpm == 60
    other.revoke("alice")
    new, _ = other.create("alice")  # a revoked key's name may be reused
    assert other.get("alice").id == new.id
    assert store.active_count() == 1
    changed = store.update("alice", rpm=10, models=["chat"], quota_tokens=500)
    assert (changed.rpm, changed.models, changed.balance) == (10, ("chat",), 500)
    assert store.topup("alice", 250).balance == 750
    assert [k.name for k in other.list()] == ["alice", "alice"]  # the revoked one kept
    other.close()
    store.close()


async def test_charges_are_sent_and_the_copy_refreshed_by_watch(pg_url: str) -> None:
    store = PgKeyStore(pg_url, refresh_interval=0.05)
    key, secret = store.create("bob", quota_tokens=1000)
    assert store.charge(key.id, 100).balance == 900  # the copy, at once
    cli = PgKeyStore(pg_url)
    watching = asyncio.create_task(store.watch())
    try:
        for _ in range(200):  # until the charge is in the table
            if cli.get(key.id).balance == 900:
                break
            await asyncio.sleep(0.02)
        assert cli.get(key.id).balance == 900
        cli.revoke(key.id)  # another process revokes: the copy learns it
        for _ in range(200):
            try:
                store.authenticate(secret)
            except InvalidApiKey:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(InvalidApiKey, match="revoked"):
            store.authenticate(secret)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        cli.close()
        store.close()


def _record(i: int, key_id: str | None = None) -> UsageRecord:
    return UsageRecord(
        f"req-{i}", "chat", False, key_id=key_id, upstream="up", prompt_tokens=10,
        completion_tokens=5, ttft_ms=float(i), queue_ms=1.0,
    )  # fmt: skip


async def test_usage_rows_are_committed_and_summarized(pg_url: str, tmp_path: Path) -> None:
    keys = PgKeyStore(pg_url)
    key, _ = keys.create("carol")
    log = PgUsageLog(pg_url, tmp_path)
    for i in range(20):
        log.record(_record(i, key.id))
    await log.committed("req-19")
    assert log.flush()
    log.close()
    with Qmark(connect(pg_url)).conn as conn:
        groups = summarize(Qmark(conn), "key", None)
        assert [(g.label, g.requests, g.answered, g.prompt_tokens) for g in groups] == [
            (f"carol ({key.id})", 20, 20, 200)
        ]
        since = summarize(Qmark(conn), "model", datetime.now(UTC) + timedelta(hours=1))
        assert since == []
    keys.close()


def _suite(data_dir: Path):  # type: ignore[no-untyped-def]
    return load_suite("standard", data_dir, {})


def test_audit_chain_with_two_writers_verifies(pg_url: str, tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    a = PgAuditLog(pg_url, tmp_path / "a", suite)
    b = PgAuditLog(pg_url, tmp_path / "b", suite)

    def write(log: PgAuditLog, name: str) -> None:
        for i in range(100):
            log.append("request", f"{name}-{i}", {"text": f"hello {i}"})
            if i % 10 == 0:
                log.flush()

    threads = [threading.Thread(target=write, args=(log, n)) for log, n in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    a.flush()
    b.flush()
    result = a.verify()
    assert result.ok, result.reason
    assert result.rows_checked == 200
    exported = list(b.export(datetime.now(UTC) - timedelta(hours=1), decrypt=True))
    assert len(exported) == 200
    assert {r["content"]["text"] for r in exported} == {f"hello {i}" for i in range(100)}
    a.close()
    b.close()
    # Tampering is seen, as in SQLite.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit DISABLE TRIGGER audit_append_only")
        conn.execute("UPDATE audit SET request_id = 'forged' WHERE id = 50")
    with PgAuditLog(pg_url, tmp_path, suite) as log:
        bad = log.verify()
    assert not bad.ok and bad.first_bad_row_id == 50


def test_audit_rows_cannot_be_deleted_but_prune_keeps_the_chain(
    pg_url: str, tmp_path: Path
) -> None:
    suite = _suite(tmp_path)
    with PgAuditLog(pg_url, tmp_path, suite, retention_days=1) as log:
        for i in range(5):
            log.append("request", f"r{i}", {"i": i})
        log.flush()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute("DELETE FROM audit")
        assert log.prune(datetime.now(UTC) + timedelta(days=2)) == 5
        log.append("request", "after", {"i": 9})
        log.flush()
        result = log.verify()
    assert result.ok and result.pruned_through == 5 and result.last_row_id == 6


def test_the_sqlite_default_is_untouched(tmp_path: Path) -> None:
    # Same code paths with no store: the audit log is still a file.
    with AuditLog(tmp_path, _suite(tmp_path)) as log:
        log.append("request", "r", {"x": 1})
        log.flush()
        assert log.verify().ok
    assert sqlite3.connect(tmp_path / "audit.db").execute("SELECT COUNT(*) FROM audit").fetchone()


# --- Start-up errors ---------------------------------------------------------------------------


def test_unreachable_postgresql_is_a_clear_error(tmp_path: Path) -> None:
    from tests.conftest import free_port

    url = f"postgresql://nobusy:{PASSWORD}@127.0.0.1:{free_port()}/nobusy"
    with pytest.raises(ConfigError) as caught:
        PgKeyStore(url)
    message = caught.value.message
    assert "cannot reach PostgreSQL at postgresql://nobusy:***@127.0.0.1" in message
    assert "listen_addresses" in message and PASSWORD not in message


def test_wrong_password_is_a_clear_error(postgres_server: PostgresServer) -> None:
    url = postgres_server.url(password="wrong-password-123")
    with pytest.raises(ConfigError) as caught:
        PgKeyStore(url)
    message = caught.value.message
    assert "refused nobusy" in message and "password" in message
    assert "wrong-password-123" not in message and "***" in message


def test_a_role_without_rights_to_migrate_is_a_clear_error(
    postgres_server: PostgresServer, pg_url: str
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    postgres_server.execute("DROP ROLE IF EXISTS weak")
    postgres_server.execute("CREATE ROLE weak LOGIN PASSWORD 'weak-secret-77'")
    postgres_server.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC", database)
    url = postgres_server.url(database, "weak", "weak-secret-77")
    with pytest.raises(ConfigError) as caught:
        PgKeyStore(url)
    message = caught.value.message
    assert "does not let nobusy's role create its tables" in message
    assert "GRANT CREATE ON SCHEMA public" in message and "weak-secret-77" not in message


def test_storage_errors_name_the_url_without_its_password(pg_url: str) -> None:
    store = PgKeyStore(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                     "application_name = 'nobusy' AND datname = current_database()")  # fmt: skip
        conn.execute("ALTER TABLE keys RENAME TO keys_gone")
    with pytest.raises(StorageUnavailable) as caught:
        store.list()
    assert "***" in caught.value.message and PASSWORD not in caught.value.message
    store.close()


# --- PostgreSQL down: spill and replay ----------------------------------------------------------


@pytest.fixture()
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of the test's own, to stop and start again."""
    from tests.conftest import free_port

    with PostgresServer.private(free_port()) as server:
        yield server.start_or_skip()


def _wait(condition: Callable[[], bool], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


async def test_rows_spill_while_postgresql_is_down_and_replay_in_order(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    url = own_postgres.url()
    keys = PgKeyStore(url)
    key, secret = keys.create("dave")
    usage = PgUsageLog(url, tmp_path, liveness=keys.liveness, retry_interval=0.1)
    suite = _suite(tmp_path)
    audit = PgAuditLog(url, tmp_path, suite, liveness=keys.liveness, retry_interval=0.1)
    for i in range(5):
        usage.record(_record(i, key.id))
        audit.append("request", f"req-{i}", {"i": i})
    await usage.committed("req-4")
    audit.flush()

    own_postgres.stop()
    for i in range(5, 15):
        usage.record(_record(i, key.id))
        audit.append("request", f"req-{i}", {"i": i})
    await usage.committed("req-14")  # committed: in the spill file
    audit.flush()
    assert not keys.liveness.ok and "writing" in keys.liveness.detail
    health = keys.liveness.health()
    assert health.status == "degraded" and "spilled" in health.detail
    assert health.url.startswith("postgresql://postgres:***@") and PASSWORD not in health.detail
    assert usage.spill.path.exists() and audit.open_spill().path.exists()
    assert b"req-14" in usage.spill.path.read_bytes()
    assert b'"i"' not in audit.open_spill().path.read_bytes()  # content encrypted there
    assert keys.authenticate(secret).id == key.id  # serving goes on from the copy

    own_postgres.start()
    assert _wait(lambda: not usage.spill.path.exists() and not audit.open_spill().path.exists())
    assert keys.liveness.ok
    usage.record(_record(15, key.id))
    await usage.committed("req-15")
    usage.close()
    audit.close()
    keys.close()

    rows = own_postgres.execute("SELECT request_id FROM usage ORDER BY id")
    assert [r[0] for r in rows] == [f"req-{i}" for i in range(16)]  # all, once, in order
    with PgAuditLog(url, tmp_path, suite) as log:
        result = log.verify()
        ids = [r["request_id"] for r in log.export(datetime.now(UTC) - timedelta(hours=1))]
    assert result.ok and result.rows_checked == 15
    assert ids == [f"req-{i}" for i in range(15)]


def test_a_replayed_batch_is_not_stored_twice(pg_url: str, tmp_path: Path) -> None:
    usage = PgUsageLog(pg_url, tmp_path)
    row = usage._row(_record(1))
    usage._insert([row])
    usage._insert([row])  # as after a commit whose acknowledgement was lost
    usage.close()
    suite = _suite(tmp_path)
    with PgAuditLog(pg_url, tmp_path, suite) as audit:
        event = (time.time_ns(), "request", "r1", None, None, None, b'{"a":1}', "event-1")
        audit._insert([event])
        audit._insert([event])
        assert audit.verify().rows_checked == 1
    assert own_count(pg_url) == 1


def own_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM usage").fetchone()
        assert row is not None
        return int(row[0])


def test_a_spill_file_left_by_a_stopped_process_is_replayed_at_start(
    pg_url: str, tmp_path: Path
) -> None:
    usage = PgUsageLog(pg_url, tmp_path)
    row = usage._row(_record(7))
    usage.close()
    orphan = tmp_path / "spill" / "usage-999999999.jsonl"  # no such process
    orphan.write_bytes(orjson.dumps(list(row)) + b"\n")
    usage = PgUsageLog(pg_url, tmp_path, retry_interval=0.05)
    assert _wait(lambda: own_count(pg_url) == 1)
    usage.close()
    assert not orphan.exists()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql://u:pw-123@h/db", "must be a postgresql:// URL"),
        ("postgresql://u:pw-123@h:abc/db", "is not a valid URL"),
        ("postgresql://u:pw-123@[::1/db", "is not a valid URL"),
    ],
)
def test_a_bad_store_url_is_refused_at_load_without_echoing_it(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"NOBUSY_STORE": url})
    assert words in caught.value.message and "pw-123" not in caught.value.message


def test_nobusy_check_probes_postgresql(postgres_server: PostgresServer, pg_url: str) -> None:
    assert probe(load_settings(env={})) is None  # no store: nothing to probe
    health = probe(load_settings(env={"NOBUSY_STORE": pg_url}))
    assert health is not None and health.ok and health.detail.startswith("PostgreSQL 18")
    wrong = postgres_server.url(password="wrong-password-123")
    health = probe(load_settings(env={"NOBUSY_STORE": wrong}))
    assert health is not None and health.status == "down" and "refused nobusy" in health.detail
    assert "wrong-password-123" not in health.detail + health.url


async def test_a_restart_of_postgresql_between_writes_is_not_an_outage(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    url = own_postgres.url()
    keys = PgKeyStore(url)
    usage = PgUsageLog(url, tmp_path, liveness=keys.liveness)
    usage.record(_record(1))
    await usage.committed("req-1")
    own_postgres.stop()  # closes every connection, seen only when used
    own_postgres.start()
    usage.record(_record(2))
    await usage.committed("req-2")
    assert keys.list() == []  # management reconnects too
    assert keys.liveness.ok and not usage.spill.path.exists()
    usage.close()
    keys.close()
    assert own_postgres.execute("SELECT COUNT(*) FROM usage") == [(2,)]
