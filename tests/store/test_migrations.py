"""One migration system: a data dir written by the previous code opens unchanged.

``tests/data/legacy`` was made by nobusy before ``nobusy.store`` existed: ``nobusy.db`` by the
module ``nobusy.db`` (sqlite-utils migrations), ``audit.db`` by ``nobusy.audit``'s own migration
table; one key and a revoked one, one usage row, three audit rows (data key in secret.key).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from nobusy.crypto import load_suite
from nobusy.keys import sha256_hasher
from nobusy.store.audit import AuditLog
from nobusy.store.keys import KeyStore
from nobusy.store.migrations import AUDIT, NOBUSY, migrate, open_db
from nobusy.store.usage import summarize

LEGACY = Path(__file__).parent.parent / "data" / "legacy"
SECRET = "nb-8LbKwdCjehvHRjbdeRg9P9gGPqbx5qItl-R4R1HPw8Y"  # team-a's, made with sha256


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("NOBUSY_SECRET_KEY", "NOBUSY_CRYPTO"):
        monkeypatch.delenv(name, raising=False)
    shutil.copytree(LEGACY, tmp_path / "data")
    return tmp_path / "data"


NOBUSY_NAMES = [
    "m001_keys",
    "m002_usage",
    "m003_usage_notes",
    "m004_key_windows",
    "m005_key_names_reusable",
    "m006_responses",
    "m007_usage_cache",
    "m008_responses_shared",
    "m009_knowledge",
    "m010_money",
    "m011_knowledge_claims",
    "m012_console",
    "m013_key_groups",
    "m014_knowledge_shared",
    "m015_neutral_vectors",
    "m016_knowledge_word_counts",
]


def names(db: Database, migrations: Migrations) -> list[str]:
    return [m.name for m in migrations.applied(db)]


def test_an_old_nobusy_db_opens_with_its_keys_and_usage(data: Path) -> None:
    db = open_db(data)
    try:
        assert names(db, NOBUSY) == NOBUSY_NAMES
        assert NOBUSY.pending(db) == []
        [group] = summarize(db.conn, "key", None)
        assert (group.requests, group.prompt_tokens, group.completion_tokens) == (1, 5, 7)
        # The old rows are in the console's daily rollup too (m012_console's backfill).
        daily = db.conn.execute("SELECT SUM(requests), SUM(completion_tokens) FROM usage_daily")
        assert daily.fetchone() == (1, 7)
    finally:
        db.close()
    store = KeyStore(data, sha256_hasher)
    try:
        assert store.authenticate(SECRET).name == "team-a"
        assert [k.name for k in store.list()] == ["team-a", "old"]
        assert store.get("old").revoked_at is not None
    finally:
        store.close()


def test_an_old_audit_db_opens_verifies_and_grows(data: Path) -> None:
    suite = load_suite("gm", data, {})
    with sqlite3.connect(data / "audit.db") as conn:
        [(old_applied_at,)] = conn.execute("SELECT applied_at FROM migrations").fetchall()
    conn.close()
    with AuditLog(data, suite) as log:  # m001_audit would fail if run again: its tables exist
        assert log.verify().ok and log.verify().rows_checked == 3
        assert log.append("request", "req-new", {"messages": []})
        log.flush()
        result = log.verify()
        assert (result.ok, result.rows_checked) == (True, 4)
    db = migrate(data / "audit.db", AUDIT, autocommit=True)
    try:
        applied = AUDIT.applied(db)
        assert [(m.name, m.applied_at) for m in applied] == [("m001_audit", old_applied_at)]
        assert AUDIT.pending(db) == []
        # The old table stays: an older nobusy opening the file finds its own record.
        assert db.table("migrations").exists()
    finally:
        db.close()
    with AuditLog(data, suite) as log:  # opened again: nothing adopted or applied twice
        assert log.verify().rows_checked == 4
    db = migrate(data / "audit.db", AUDIT, autocommit=True)
    try:
        assert names(db, AUDIT) == ["m001_audit"]
    finally:
        db.close()


def test_a_new_data_dir_gets_every_migration_once(tmp_path: Path) -> None:
    db = open_db(tmp_path)
    db.close()
    db = migrate(tmp_path / "audit.db", AUDIT, autocommit=True)
    db.close()
    db = migrate(tmp_path / "audit.db", AUDIT, autocommit=True)
    try:
        assert names(db, AUDIT) == ["m001_audit"]
        assert not db.table("migrations").exists()
    finally:
        db.close()
