"""The audit log: the chain catches edits and deletions, pruning keeps it whole, exports sign."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from nobusy.cli.audit import audit, parse_since
from nobusy.crypto import CryptoSuite, load_suite
from nobusy.store.audit import AuditError, AuditLog, verify_export

SECRET = "do-not-store-this-prompt"
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOBUSY_SECRET_KEY", "NOBUSY_CRYPTO", "NOBUSY_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def suite(tmp_path: Path) -> CryptoSuite:
    return load_suite("gm", tmp_path, {})


def fill(log: AuditLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        body = {"messages": [{"role": "user", "content": f"{SECRET} {i}"}]}
        assert log.append("request", f"req-{i}", body, key_id="k1", alias="chat", upstream="ds")
    log.flush()


@pytest.fixture
def log(tmp_path: Path, suite: CryptoSuite) -> Iterator[AuditLog]:
    with AuditLog(tmp_path, suite) as log:
        fill(log, 20)
        yield log


def raw(path: Path, *sql: str) -> None:
    """What someone with write access to audit.db can do: triggers are no obstacle."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER IF EXISTS audit_no_update")
        db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for statement in sql:
            db.execute(statement)
    db.close()


def test_appended_rows_verify(log: AuditLog) -> None:
    result = log.verify()
    assert (result.ok, result.rows_checked, result.last_row_id) == (True, 20, 20)
    assert log.written == 20 and log.dropped == 0


def test_rows_are_append_only_by_accident_too(log: AuditLog) -> None:
    with sqlite3.connect(log.path) as db, pytest.raises(sqlite3.IntegrityError, match="append"):
        db.execute("UPDATE audit SET alias = 'x' WHERE id = 3")
    db.close()


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE audit SET content = substr(content, 1, 20) || x'00' WHERE id = 7",
        "UPDATE audit SET content_hash = '00' WHERE id = 7",
        "UPDATE audit SET alias = 'other', event = 'response' WHERE id = 7",
        "UPDATE audit SET time = '2026-01-01T00:00:00.000000Z' WHERE id = 7",
        "UPDATE audit SET content = (SELECT content FROM audit WHERE id = 8) WHERE id = 7",
    ],
)
def test_an_edited_row_is_named(log: AuditLog, change: str) -> None:
    raw(log.path, change)
    result = log.verify()
    assert not result.ok and result.first_bad_row_id == 7
    assert "changed" in result.reason and result.rows_checked == 6


def test_a_deleted_middle_row_is_named(log: AuditLog) -> None:
    raw(log.path, "DELETE FROM audit WHERE id = 10")
    result = log.verify()
    assert (result.ok, result.first_bad_row_id) == (False, 10)
    assert "row 10 missing" in result.reason


def test_a_deleted_and_renumbered_row_is_caught(log: AuditLog) -> None:
    raw(log.path, "DELETE FROM audit WHERE id = 10", "UPDATE audit SET id = id - 1 WHERE id > 10")
    result = log.verify()
    assert (result.ok, result.first_bad_row_id) == (False, 10)


def test_deleted_last_rows_are_caught_by_the_head(log: AuditLog) -> None:
    raw(log.path, "DELETE FROM audit WHERE id >= 19")
    result = log.verify()
    assert (result.ok, result.first_bad_row_id) == (False, 19)
    assert "rows 19–20 deleted from the end" in result.reason


def test_a_moved_head_is_caught_without_the_key(log: AuditLog) -> None:
    raw(
        log.path,
        "DELETE FROM audit WHERE id = 20",
        "UPDATE audit_chain SET row_id = 19, row_hash = (SELECT row_hash FROM audit WHERE id = 19)"
        " WHERE name = 'head'",
    )
    result = log.verify()
    assert not result.ok and "head checkpoint was altered" in result.reason


def test_a_deleted_head_is_caught(log: AuditLog) -> None:
    raw(log.path, "DELETE FROM audit WHERE id = 20", "DELETE FROM audit_chain")
    result = log.verify()
    assert not result.ok and "head checkpoint is missing" in result.reason


def test_not_detectable_an_older_copy_of_the_whole_database(tmp_path: Path) -> None:
    # The documented limit: a consistent older snapshot (rows + head) verifies. Signed exports
    # kept elsewhere are the answer to that.
    suite = load_suite("gm", tmp_path, {})
    with AuditLog(tmp_path, suite) as log:
        fill(log, 5)
    old = (tmp_path / "audit.db").read_bytes()
    with AuditLog(tmp_path, suite) as log:
        fill(log, 5, start=5)
    (tmp_path / "audit.db").write_bytes(old)
    with AuditLog(tmp_path, suite) as log:
        assert log.verify().ok and log.verify().rows_checked == 5


@pytest.mark.parametrize("store", ["full", "hash"])
def test_content_never_reaches_the_disk_in_clear(tmp_path: Path, store: str) -> None:
    suite = load_suite("gm", tmp_path, {})
    with AuditLog(tmp_path, suite, store=store) as log:  # type: ignore[arg-type]
        fill(log, 10)
        rows = list(log.export(LONG_AGO, decrypt=True))
        assert log.verify().ok
    for path in tmp_path.glob("audit.db*"):
        assert SECRET.encode() not in path.read_bytes()
    with sqlite3.connect(tmp_path / "audit.db") as db:
        stored = [r[0] for r in db.execute("SELECT content FROM audit")]
    db.close()
    if store == "hash":
        assert stored == [None] * 10 and [r["content"] for r in rows] == [None] * 10
    else:
        assert rows[3]["content"]["messages"][0]["content"] == f"{SECRET} 3"
    assert all(len(r["content_hash"]) == 64 for r in rows)


def test_export_since_and_content_forms(tmp_path: Path, suite: CryptoSuite) -> None:
    with AuditLog(tmp_path, suite) as log:
        fill(log, 3)
        time.sleep(0.01)
        middle = datetime.now(UTC)
        fill(log, 2, start=3)
        later = list(log.export(middle))
        assert [r["request_id"] for r in later] == ["req-3", "req-4"]
        assert isinstance(later[0]["content"], str)  # base64 of the SM4-GCM token
        assert len(list(log.export(LONG_AGO))) == 5
        assert list(log.export(datetime.now(UTC) + timedelta(seconds=1))) == []
        first = next(log.export(LONG_AGO, decrypt=True))
    assert first["content"] == {"messages": [{"content": f"{SECRET} 0", "role": "user"}]}
    assert (first["key_id"], first["alias"], first["upstream"]) == ("k1", "chat", "ds")
    assert first["prev_hash"] == "00" * 32


@pytest.mark.parametrize("name", ["gm", "standard"])
def test_signed_export(tmp_path: Path, name: str) -> None:
    suite = load_suite(name, tmp_path, {})  # type: ignore[arg-type]
    out = tmp_path / "export.jsonl"
    with AuditLog(tmp_path, suite) as log:
        fill(log, 5)
        assert log.write_export(out, LONG_AGO, sign=True) == 5
    sig = tmp_path / "export.jsonl.sig"
    assert verify_export(out, sig, suite.public_key_path)
    out.write_bytes(out.read_bytes().replace(b"req-3", b"req-9"))
    assert not verify_export(out, sig, suite.public_key_path)


def test_prune_keeps_the_chain_verifiable(tmp_path: Path, suite: CryptoSuite) -> None:
    with AuditLog(tmp_path, suite, retention_days=30) as log:
        fill(log, 10)
        time.sleep(0.01)
        cut = datetime.now(UTC)
        fill(log, 5, start=10)
        assert log.prune(now=cut + timedelta(days=30)) == 10
        assert log.prune(now=cut + timedelta(days=30)) == 0
        result = log.verify()
        assert (result.ok, result.rows_checked, result.pruned_through) == (True, 5, 10)
        fill(log, 3, start=15)
        assert log.verify().ok and log.verify().last_row_id == 18
        assert log.prune(now=datetime.now(UTC) + timedelta(days=31)) == 8
        assert log.verify().ok and log.verify().rows_checked == 0
        fill(log, 1, start=18)
        assert log.verify().ok and log.verify().last_row_id == 19


def test_deleting_past_the_anchor_is_caught(tmp_path: Path, suite: CryptoSuite) -> None:
    with AuditLog(tmp_path, suite) as log:
        fill(log, 10)
        log.prune(now=datetime.now(UTC) + timedelta(days=181))
        fill(log, 5, start=10)
        raw(log.path, "DELETE FROM audit WHERE id = 11")
        result = log.verify()
        assert (result.ok, result.first_bad_row_id) == (False, 11)


def test_prune_refuses_to_erase_a_broken_chain(log: AuditLog) -> None:
    raw(log.path, "UPDATE audit SET alias = 'x' WHERE id = 2")
    with pytest.raises(AuditError, match="not pruning a broken chain"):
        log.prune(now=datetime.now(UTC) + timedelta(days=365))
    assert log.verify().first_bad_row_id == 2


def test_another_suite_or_key_is_refused(tmp_path: Path, suite: CryptoSuite) -> None:
    AuditLog(tmp_path, suite).close()
    with pytest.raises(AuditError, match="written with crypto 'gm'"):
        AuditLog(tmp_path, load_suite("standard", tmp_path, {}))
    with pytest.raises(AuditError, match="another data key"):
        AuditLog(tmp_path, load_suite("gm", tmp_path, {"NOBUSY_SECRET_KEY": "00" * 16}))


def test_threads_and_two_writers_share_one_chain(tmp_path: Path, suite: CryptoSuite) -> None:
    a, b = AuditLog(tmp_path, suite), AuditLog(tmp_path, suite)  # as two worker processes
    threads = [threading.Thread(target=fill, args=(log, 200, i * 1000)) for i in range(2)
               for log in (a, b)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.close()
    b.close()
    with AuditLog(tmp_path, suite) as log:
        result = log.verify()
    assert (result.ok, result.rows_checked) == (True, 800)


def test_a_full_queue_blocks_briefly_then_counts_drops(tmp_path: Path, suite: CryptoSuite) -> None:
    log = AuditLog(tmp_path, suite, queue_size=4, batch_size=2, block_timeout=0.01)
    holder = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    accepted = sum(log.append("request", f"r{i}") for i in range(20))
    holder.execute("ROLLBACK")
    holder.close()
    log.close()
    assert log.dropped == 20 - accepted and log.dropped >= 10
    assert log.written == accepted
    assert not log.append("request", "after close") and log.dropped == 21 - accepted


def test_close_flushes(tmp_path: Path, suite: CryptoSuite) -> None:
    log = AuditLog(tmp_path, suite, flush_interval=10)
    log.append("block", "r1", {"reason": "sensitive word"})
    log.close()
    with AuditLog(tmp_path, suite) as again:
        assert again.verify().rows_checked == 1
        assert next(again.export(LONG_AGO, decrypt=True))["event"] == "block"


# The CLI, through the click group itself (it is registered in the main CLI separately).


def test_cli_verify_exit_status(log: AuditLog, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(audit, ["verify", "--data-dir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert "intact" in ok.output and "20" in ok.output
    raw(log.path, "UPDATE audit SET upstream = 'x' WHERE id = 4")
    bad = runner.invoke(audit, ["verify", "--data-dir", str(tmp_path)])
    assert bad.exit_code == 1 and "TAMPERED" in bad.output and "│ 4 " in bad.output


def test_cli_verify_missing_log_or_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(audit, ["verify", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no audit.db in" in result.output
    AuditLog(tmp_path, load_suite("gm", tmp_path, {})).close()
    (tmp_path / "secret.key").unlink()
    result = CliRunner().invoke(audit, ["verify", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no NOBUSY_SECRET_KEY" in result.output
    assert not (tmp_path / "secret.key").exists()


def test_cli_signed_export_round_trip(log: AuditLog, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "x.jsonl"
    args = ["export", "--data-dir", str(tmp_path), "--since", "7d", "--out", str(out)]
    result = runner.invoke(audit, [*args, "--sign", "--decrypt"])
    assert result.exit_code == 0, result.output
    assert "signing-sm2.pub" in result.output and len(out.read_bytes().splitlines()) == 20
    assert SECRET.encode() in out.read_bytes()  # --decrypt
    check = ["verify", "--data-dir", str(tmp_path), "--export", str(out)]
    assert runner.invoke(audit, check).exit_code == 0
    out.write_bytes(out.read_bytes() + b"\n")
    result = runner.invoke(audit, check)
    assert result.exit_code == 1 and "does not match" in result.output


def test_cli_export_to_stdout_and_usage_errors(log: AuditLog, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["export", "--data-dir", str(tmp_path)]
    result = runner.invoke(audit, [*base, "--since", "2000-01-01"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 20
    assert SECRET not in result.stdout  # content stays encrypted without --decrypt
    assert runner.invoke(audit, [*base, "--since", "7d", "--sign"]).exit_code == 2
    assert runner.invoke(audit, [*base, "--since", "yesterday"]).exit_code == 2


def test_parse_since() -> None:
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("2026-11-01T00:00:00+08:00", now) == datetime(2026, 10, 31, 16, tzinfo=UTC)
