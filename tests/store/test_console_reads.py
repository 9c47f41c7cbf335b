"""The console's reads: the daily rollup kept by its trigger equals the rows, and the request
log pages through a million rows by keyset (each page an index range, none a scan)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from nobusy.errors import InvalidRequest
from nobusy.store.console import Filters, csv_rows, decode_cursor, request_page, series
from nobusy.store.migrations import open_db
from nobusy.store.sessions import SessionStore

INSERT = (
    "INSERT INTO usage (time, request_id, key_id, alias, upstream, tried, outcome, "
    "prompt_tokens, completion_tokens, report_cost_micros, first_choice_cost_micros) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _rows(n: int, days: int = 30, keys: int = 100) -> list[tuple[object, ...]]:
    out = []
    for i in range(n):
        day, second = divmod(i * days * 86_400 // n, 86_400)
        hours, minutes, seconds = second // 3600, second // 60 % 60, second % 60
        when = f"2026-11-{day + 1:02d} {hours:02d}:{minutes:02d}:{seconds:02d}"
        failed_over = i % 10 == 0
        out.append((
            when, f"req-{i}", None if i % 50 == 0 else f"k{i % keys}",
            "chat" if i % 3 else "code", "backup" if failed_over else "main",
            '["main", "backup"]' if failed_over else '["main"]',
            "all_upstreams_failed" if i % 25 == 0 else "ok", 10, 5, 100 + i % 7,
            90 if failed_over else None,
        ))  # fmt: skip
    return out


def generate(conn: sqlite3.Connection, n: int) -> None:
    """``n`` rows over 30 days and 100 keys, made by SQLite itself (seconds for a million)."""
    with conn:
        conn.execute(
            "INSERT INTO usage (time, request_id, key_id, alias, upstream, tried, outcome, "
            "prompt_tokens, completion_tokens, report_cost_micros) "
            "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
            "SELECT datetime('2026-11-01', '+' || (i * 2592000 / ?) || ' seconds'), "
            "'req-' || i, 'k' || (i % 100), CASE WHEN i % 3 THEN 'chat' ELSE 'code' END, "
            "'main', '[\"main\"]', CASE WHEN i % 25 THEN 'ok' ELSE 'all_upstreams_failed' END, "
            "10, 5, 100 FROM c",
            (n - 1, n),
        )


def test_the_rollup_equals_the_rows(tmp_path: Path) -> None:
    db = open_db(tmp_path)
    rows = _rows(3000)
    # Half before the migration's backfill would see them, half through the trigger: both
    # paths sum the same way (the backfill is checked by rerunning it on a copy below).
    db.conn.executemany(INSERT, rows)
    db.conn.commit()
    data = series(db.conn, date(2026, 11, 1), date(2026, 11, 30), "key")
    assert len(data["days"]) == 30
    total = sum(g["totals"]["requests"] for g in data["groups"])
    assert total == 3000
    spend = sum(g["totals"]["spend_micros"] for g in data["groups"])
    assert spend == db.conn.execute("SELECT SUM(report_cost_micros) FROM usage").fetchone()[0]
    errors = sum(g["totals"]["errors"] for g in data["groups"])
    assert errors == 3000 // 25
    failovers = sum(g["totals"]["failovers"] for g in data["groups"])
    assert failovers == 300
    no_key = next(g for g in data["groups"] if g["id"] is None)
    assert no_key["label"] == "(no key)" and no_key["totals"]["requests"] == 60
    extra = sum(g["failover_extra_micros"] for g in data["groups"])
    expected = sum(int(r[9]) - int(r[10]) for r in rows if r[10] is not None)  # type: ignore[call-overload]
    assert extra == expected
    by_model = series(db.conn, date(2026, 11, 1), date(2026, 11, 30), "model")
    assert {g["label"] for g in by_model["groups"]} == {"chat", "code"}
    # The backfill of m011 computes the same table from the rows.
    from nobusy.store.migrations import USAGE_DAILY_BACKFILL

    before = db.conn.execute("SELECT * FROM usage_daily ORDER BY 1, 2, 3, 4").fetchall()
    db.conn.execute("DELETE FROM usage_daily")
    db.conn.execute(USAGE_DAILY_BACKFILL)
    assert db.conn.execute("SELECT * FROM usage_daily ORDER BY 1, 2, 3, 4").fetchall() == before
    db.close()


def test_a_million_rows_page_by_keyset(tmp_path: Path) -> None:
    db = open_db(tmp_path)
    conn = db.conn
    conn.execute("DROP TRIGGER usage_daily_add")  # this test is about the log, not the rollup
    generate(conn, 1_000_000)
    first = request_page(conn, Filters(), 50, None)
    assert len(first["data"]) == 50 and first["next_cursor"]
    assert first["data"][0]["request_id"] == "req-999999"
    second = request_page(conn, Filters(), 50, decode_cursor(first["next_cursor"]))
    assert second["data"][0]["request_id"] == "req-999949"
    # Deep in the log: after the 900,000th row from the top, as fast to reach as the first.
    deep = request_page(conn, Filters(), 50, ("2026-11-03 00:00:00", 10**9))
    assert deep["data"][0]["time"] <= "2026-11-03 00:00:00" and len(deep["data"]) == 50
    filtered = request_page(conn, Filters(key_id="k7", status="ok"), 20, None)
    assert {r["key_id"] for r in filtered["data"]} == {"k7"}
    errors = request_page(conn, Filters(status="error"), 20, None)
    assert {r["outcome"] for r in errors["data"]} == {"all_upstreams_failed"}
    # Every page is an index range: no step of the plan scans the table.
    for filters in (Filters(), Filters(key_id="k7"), Filters(since="2026-11-02 00:00:00")):
        clauses, params = filters.where()
        clauses.append("(time, usage.id) < (?, ?)")
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT usage.id FROM usage WHERE "
            + " AND ".join(clauses)
            + " ORDER BY time DESC, usage.id DESC LIMIT 51",
            [*params, "2026-11-20 00:00:00", 10**9],
        ).fetchall()
        text = " ".join(str(step[-1]) for step in plan)
        assert "USING" in text and "TEMP B-TREE" not in text, text
    db.close()


def test_csv_rows_cover_the_range_in_order(tmp_path: Path) -> None:
    db = open_db(tmp_path)
    db.conn.executemany(INSERT, _rows(5000))
    db.conn.commit()
    rows = list(csv_rows(db.conn, Filters(since="2026-11-02 00:00:00"), batch=700))
    assert rows and all(r[0] >= "2026-11-02 00:00:00" for r in rows)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert len({r[1] for r in rows}) == len(rows)  # request ids: none twice across batches
    db.close()


def test_a_bad_cursor_is_a_400() -> None:
    with pytest.raises(InvalidRequest, match="cursor"):
        decode_cursor("not-a-cursor")


def test_sessions_expire_and_are_revoked(tmp_path: Path) -> None:
    sessions = SessionStore(tmp_path)
    token = sessions.create(60, "127.0.0.1", now=1000.0)
    assert sessions.valid(token, now=1059.0)
    assert not sessions.valid(token, now=1061.0)
    assert not sessions.valid("something else", now=1000.0)
    other = sessions.create(60, "127.0.0.1")
    sessions.revoke(other)
    assert not sessions.valid(other)
    with sqlite3.connect(tmp_path / "nobusy.db") as conn:  # only the hash is kept
        stored = [r[0] for r in conn.execute("SELECT token_hash FROM console_sessions")]
    assert token not in stored
    sessions.close()


async def test_postgresql_keeps_the_same_rollup_and_pages(pg_url: str, tmp_path: Path) -> None:
    from nobusy.store.pg_usage import PgUsageLog
    from nobusy.store.postgres import Qmark, connect
    from nobusy.store.usage import UsageRecord

    log = PgUsageLog(pg_url, tmp_path)
    for i in range(6):
        log.record(
            UsageRecord(
                f"req-{i}", "chat", False, upstream="b" if i % 2 else "a",
                tried=["a", "b"] if i % 2 else ["a"], prompt_tokens=10, completion_tokens=5,
                report_cost_micros=100, first_choice_cost_micros=60 if i % 2 else None,
                outcome="ok" if i < 5 else "all_upstreams_failed",
            )
        )  # fmt: skip
    await log.committed("req-5")
    log.close()
    with closing(Qmark(connect(pg_url))) as conn:
        today = datetime.now(UTC).date()
        [group] = series(conn, today, today, "model")["groups"]
        assert group["totals"] == {
            "requests": 6, "tokens": 90, "spend_micros": 600, "errors": 1, "failovers": 3,
        }  # fmt: skip
        assert group["failover_extra_micros"] == 3 * 40
        first = request_page(conn, Filters(), 4, None)
        rest = request_page(conn, Filters(), 4, decode_cursor(first["next_cursor"]))
        ids = [r["request_id"] for r in first["data"] + rest["data"]]
        assert sorted(ids) == [f"req-{i}" for i in range(6)] and rest["next_cursor"] is None
