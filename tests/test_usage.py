"""The usage log: rows in SQLite, a writer that outlives a locked database, the report, SIGKILL."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.types import Message, Receive, Scope, Send

from nobusy.cli.usage import percentile, usage
from nobusy.store.ledger import USAGE_LOG, CommittedAnswers
from nobusy.store.migrations import DB_NAME, open_db
from nobusy.store.usage import UsageLog, UsageRecord
from tests.conftest import Process, serve


def connect(data_dir: Path) -> closing[sqlite3.Connection]:
    """A connection of our own to the database, as another process would have."""
    return closing(sqlite3.connect(data_dir / DB_NAME))


def rows(data_dir: Path) -> list[dict[str, Any]]:
    with connect(data_dir) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY id")]


@pytest.fixture
def log(tmp_path: Path) -> Iterator[UsageLog]:
    usage_log = UsageLog(tmp_path, busy_timeout=0.02)
    yield usage_log
    usage_log.close()


def test_a_record_round_trips(log: UsageLog, tmp_path: Path) -> None:
    record = UsageRecord(
        "req-1",
        "chat",
        stream=True,
        started=1_790_000_000.25,
        upstream="backup",
        tried=["fake", "backup"],
        prompt_tokens=7,
        completion_tokens=12,
        ttft_ms=81.5,
        queue_ms=3.25,
        overflow=True,
        notes=["continued on backup after 5 tokens (prefix)"],
        key_id="key_0123456789",
        duration_ms=240.0,
    )
    log.record(record)
    assert log.flush()
    (row,) = rows(tmp_path)
    assert row["time"] == "2026-09-21 14:13:20"  # when it started, UTC, to the second
    assert (row["request_id"], row["alias"], row["upstream"]) == ("req-1", "chat", "backup")
    assert json.loads(row["tried"]) == ["fake", "backup"]
    assert json.loads(row["notes"]) == record.notes
    assert (row["stream"], row["overflow"], row["outcome"]) == (1, 1, "ok")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 12)
    assert (row["ttft_ms"], row["queue_ms"], row["duration_ms"]) == (81.5, 3.25, 240.0)
    assert row["key_id"] == "key_0123456789"
    assert (log.written, log.dropped, log.failed) == (1, 0, 0)


def test_the_row_is_a_snapshot_taken_at_record(log: UsageLog, tmp_path: Path) -> None:
    record = UsageRecord("req-1", "chat", stream=False, tried=["a"])
    log.record(record)
    record.tried.append("b")  # a late change is not written, nor half written
    record.outcome = "client_gone"
    log.flush()
    (row,) = rows(tmp_path)
    assert (row["tried"], row["outcome"]) == ('["a"]', "ok")


def test_every_outcome_gets_its_row(log: UsageLog, tmp_path: Path) -> None:
    outcomes = ["ok"] * 5 + ["rate_limit_exceeded"] * 2 + ["all_upstreams_failed", "client_gone"]
    for i, outcome in enumerate(outcomes):
        log.record(UsageRecord(f"req-{i}", "chat", stream=False, outcome=outcome))
    log.close()  # close flushes
    with connect(tmp_path) as conn:
        by_outcome = dict(conn.execute("SELECT outcome, COUNT(*) FROM usage GROUP BY outcome"))
    assert by_outcome == {
        "ok": 5,
        "rate_limit_exceeded": 2,
        "all_upstreams_failed": 1,
        "client_gone": 1,
    }


def test_the_writer_waits_out_a_locked_database(log: UsageLog, tmp_path: Path) -> None:
    blocker = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock for a while
    for i in range(50):
        log.record(UsageRecord(f"req-{i}", "chat", stream=False))
    time.sleep(0.3)  # several busy timeouts (20 ms each) and retries
    assert log.written == 0
    blocker.execute("COMMIT")
    blocker.close()
    assert log.flush(timeout=5)
    assert len(rows(tmp_path)) == 50
    assert (log.written, log.dropped, log.failed) == (50, 0, 0)


def test_close_gives_up_on_a_database_locked_for_good(tmp_path: Path) -> None:
    usage_log = UsageLog(tmp_path, busy_timeout=0.01)
    blocker = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    usage_log.record(UsageRecord("req-1", "chat", stream=False))
    started = time.monotonic()
    usage_log.close(timeout=0.2)
    assert time.monotonic() - started < 2
    assert usage_log.failed == 1
    blocker.close()


def test_a_full_queue_drops_and_counts_without_blocking_long(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    usage_log = UsageLog(tmp_path, queue_size=5, block_timeout=0.005, busy_timeout=0.01)
    blocker = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer is stuck on its first batch
    started = time.monotonic()
    for i in range(100):
        usage_log.record(UsageRecord(f"req-{i}", "chat", stream=False))
    # The first drop waits block_timeout; later ones within a second do not wait at all.
    assert time.monotonic() - started < 0.2
    # The writer holds the row(s) queued before it got stuck, the queue five more.
    assert usage_log.dropped >= 90
    dropped_logs = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped_logs) == 1  # the first drop, then every 1000th: not one line per row
    blocker.execute("COMMIT")
    blocker.close()
    usage_log.close()
    assert usage_log.written + usage_log.dropped == 100


def test_records_after_close_are_counted_as_dropped(log: UsageLog) -> None:
    log.close()
    log.record(UsageRecord("late", "chat", stream=False))
    assert log.dropped == 1


async def test_the_last_byte_waits_for_the_commit(tmp_path: Path) -> None:
    usage_log = UsageLog(tmp_path, busy_timeout=2.0)
    blocker = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # the first commit waits in SQLite's busy handler
    threading.Timer(0.2, blocker.execute, ["COMMIT"]).start()
    in_db_when_sent: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        usage_log.record(UsageRecord(scope["state"]["request_id"], "chat", stream=False))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            in_db_when_sent.append(len(rows(tmp_path)) == 1)

    scope = {"type": "http", "state": {USAGE_LOG: usage_log, "request_id": "req-1"}}
    started = time.monotonic()
    await CommittedAnswers(app)(scope, receive_nothing, send)
    assert in_db_when_sent == [True] and time.monotonic() - started >= 0.15
    usage_log.close()
    blocker.close()


async def receive_nothing() -> Message:
    raise AssertionError("not read")


# --- The report ------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95)) == (50.0, 95.0)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


def fill_report_data(data_dir: Path) -> None:
    now = time.time()
    usage_log = UsageLog(data_dir)  # creates the database
    with connect(data_dir) as conn, conn:
        conn.execute(
            "INSERT INTO keys (id, name, prefix, hash, created_at) "
            "VALUES ('key_aaaaaaaaaa', 'alice', 'x', 'h', '2026-01-01 00:00:00')"
        )
    for i in range(10):  # alice: 10 answered on chat via fast, ttft 10..100 ms
        usage_log.record(
            UsageRecord(
                f"a{i}",
                "chat",
                stream=False,
                started=now,
                upstream="fast",
                prompt_tokens=2,
                completion_tokens=12,
                ttft_ms=10.0 * (i + 1),
                queue_ms=50.0,
                key_id="key_aaaaaaaaaa",
            )  # fmt: skip
        )
    for i, outcome in enumerate(["rate_limit_exceeded", "all_upstreams_failed", "client_gone"]):
        usage_log.record(UsageRecord(f"n{i}", "code", stream=True, started=now, outcome=outcome))
    # Two days ago: outside --since 1d.
    usage_log.record(UsageRecord("old", "chat", stream=False, started=now - 2 * 86400))
    usage_log.close()


def invoke(*args: str) -> str:
    result = CliRunner().invoke(usage, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def table_rows(output: str) -> dict[str, list[str]]:
    """Data rows of the table, by group label: the cells (columns are 2+ spaces apart)."""
    found = {}
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 10 and cells[1].replace(",", "").isdigit():
            found[cells[0]] = cells[1:]
    return found


def test_report_by_key(tmp_path: Path) -> None:
    fill_report_data(tmp_path)
    table = table_rows(invoke("--by", "key", "--since", "1d", "--data-dir", str(tmp_path)))
    assert set(table) == {"alice (key_aaaaaaaaaa)", "(no key)"}
    # requests, answered, rejected / failed, left, prompt, completion, p50, p95, mean queue
    assert table["alice (key_aaaaaaaaaa)"] == [
        "10",
        "10",
        "0 / 0",
        "0",
        "20",
        "120",
        "50",
        "100",
        "50",
    ]
    assert table["(no key)"] == ["3", "0", "1 / 1", "1", "0", "0", "–", "–", "0"]


def test_report_by_model_and_upstream_and_all_time(tmp_path: Path) -> None:
    fill_report_data(tmp_path)
    by_model = table_rows(invoke("--by", "model", "--data-dir", str(tmp_path)))
    assert {label: cells[0] for label, cells in by_model.items()} == {"chat": "11", "code": "3"}
    recent = table_rows(invoke("--by", "model", "--since", "12h", "--data-dir", str(tmp_path)))
    assert recent["chat"][0] == "10"
    by_upstream = table_rows(invoke("--by", "upstream", "--data-dir", str(tmp_path)))
    assert {label: cells[0] for label, cells in by_upstream.items()} == {
        "fast": "10",
        "(none)": "4",
    }


def test_report_of_an_empty_log(tmp_path: Path) -> None:
    # No database at all: the report says where it looked instead of creating one.
    result = CliRunner().invoke(usage, ["--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no nobusy.db in" in result.output
    assert not (tmp_path / "nobusy.db").exists()
    open_db(tmp_path).close()
    assert "No requests logged" in invoke("--since", "2026-11-01", "--data-dir", str(tmp_path))


def test_report_rejects_a_bad_since(tmp_path: Path) -> None:
    result = CliRunner().invoke(usage, ["--since", "yesterday", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--since" in result.output


# --- SIGKILL under load ----------------------------------------------------------------------


def load_then_kill(process: Process, n: int, kill_after: int) -> set[str]:
    """Send ``n`` requests from 16 threads; SIGKILL the server once ``kill_after`` are answered.

    Returns the ids of the requests the client saw fully answered: status 200 and a whole body
    (a parsed completion, or a stream that ended after ``[DONE]``).
    """
    answered: set[str] = set()
    lock = threading.Lock()
    killed = threading.Event()

    url = f"{process.url}/v1/chat/completions"

    def one(i: int) -> None:
        stream = i % 2 == 1
        body = {"model": "ok", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
        try:
            if stream:
                with client.stream("POST", url, json=body) as r:
                    lines = list(r.iter_lines())  # to the end of the chunked body
                    complete = r.status_code == 200 and "data: [DONE]" in lines
            else:
                r = client.post(url, json=body)
                complete = r.status_code == 200 and bool(r.json()["choices"])
        except (httpx.HTTPError, ValueError):
            return  # cut off by the kill: not answered
        if complete:
            with lock:
                answered.add(r.headers["x-request-id"])
                if len(answered) >= kill_after and not killed.is_set():
                    killed.set()
                    process.proc.kill()  # SIGKILL: no lifespan shutdown, no close()

    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    with httpx.Client(timeout=10, limits=limits) as client, ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(n)))
    process.proc.wait()
    return answered


def test_nothing_answered_is_lost_to_sigkill(fake_upstream: Process, tmp_path: Path) -> None:
    config = f"""
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
models:
  ok: [fake/ok]
"""
    process = serve(tmp_path, config)
    try:
        answered = load_then_kill(process, n=200, kill_after=100)
    finally:
        process.stop()
    assert process.proc.returncode == -9
    assert len(answered) >= 100
    logged = {r["request_id"] for r in rows(process.data_dir)}
    assert answered - logged == set()
