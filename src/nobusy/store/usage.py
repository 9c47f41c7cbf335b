"""Every accepted chat request leaves one usage record, written when it ends however it ends.

Records go to the ``usage`` table of ``data_dir/nobusy.db`` through a ``BatchWriter`` (a
bounded queue and one writer thread), so the event loop never waits for SQLite. The reports
read them back here too: ``summarize`` for ``nobusy usage``, ``key_usage`` for the console's
status board.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from nobusy import errors
from nobusy.errors import NobusyError
from nobusy.store.migrations import DB_NAME, open_db
from nobusy.store.sqlite import read_only, timestamp, transaction
from nobusy.store.writer import BatchWriter

__all__ = [
    "COLUMNS",
    "GROUPS",
    "Group",
    "UsageLog",
    "UsageRecord",
    "key_usage",
    "key_usage_rows",
    "summarize",
]

log = logging.getLogger("nobusy")


@dataclass(slots=True)
class UsageRecord:
    """What one request cost and how it ended.

    ``outcome``: ``ok``; ``client_gone`` (the client left first, streaming or not: what the
    upstream produced until then is billed); the error's ``code`` (``queue_full``,
    ``all_upstreams_failed``...; ``internal_error`` for a bug); ``drained`` (still running when
    a stopping server's ``drain_timeout`` ended: cut); ``cancelled`` (server stopped otherwise).
    """

    request_id: str
    alias: str
    stream: bool
    started: float = field(default_factory=time.time)
    upstream: str | None = None
    tried: list[str] = field(default_factory=list)
    outcome: str = "ok"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    queue_ms: float = 0.0
    overflow: bool = False
    notes: list[str] = field(default_factory=list)
    key_id: str | None = None
    duration_ms: float | None = None
    cache: str | None = None  # the response cache: hit, stale, miss; None when not used

    # Money (nobusy.money.spend): cached-input tokens as the upstream reported them; whose
    # count the tokens are ("upstream", or "counted" by nobusy when it reported none); the
    # cost in the answering route's currency and in the reporting one, in micro-units; the
    # alias's first-choice route and what the same tokens would have cost there.
    cached_tokens: int = 0
    usage_source: str = "counted"
    currency: str | None = None
    cost_micros: int = 0
    report_currency: str | None = None
    report_cost_micros: int = 0
    first_choice: str | None = None
    first_choice_cost_micros: int | None = None
    budgeted: bool = False  # not stored: the key has a money budget, charge it at once
    held: bool = False  # not stored: its cost settles a money hold, not the ledger's charge

    def upstream_tokens(self) -> tuple[int, int]:
        """Prompt and completion tokens an upstream spent: none for an answer from the cache
        (the client still sees the kept answer's own usage)."""
        if self.cache in ("hit", "stale"):
            return 0, 0
        return self.prompt_tokens, self.completion_tokens


class UsageLog:
    """Usage rows in ``data_dir/nobusy.db``: ``record`` queues, one writer thread commits.

    The writer commits whatever is queued as soon as it is free, in one transaction of up to
    ``batch_size`` rows, so a row waits in memory only for the commit before its own (about a
    millisecond) and batches grow only under load. Committed means safe from a SIGKILL: in WAL
    mode a commit is in the WAL file before ``COMMIT`` returns; ``synchronous=NORMAL`` skips
    only the fsync, so only a power cut or OS crash can lose the last commits.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        block_timeout: float = 0.005,
        busy_timeout: float = 1.0,
        answer_timeout: float = 1.0,
    ) -> None:
        self._open(data_dir, busy_timeout)
        self._block_timeout = block_timeout
        self._answer_timeout = answer_timeout
        # Request ids recorded but not yet committed (or given up), and the answers waiting
        # for them; the lock makes "not committed yet, so wait" and "committed, wake" atomic.
        self._pending: set[str] = set()
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._pending_lock = threading.Lock()
        self._retrying = False
        # Counters for metrics: rows committed and failed (given up at close, or refused by
        # the table), both counted by the writer; dropped (queue full or log closed).
        self.written = self.dropped = self.failed = 0
        self._drop_lock = threading.Lock()
        self._give_up_at = math.inf  # set by close(): retries stop then
        self._stuck_until = 0.0
        self._writer = BatchWriter[_Row](
            "nobusy-usage", self._write, queue_size=queue_size, batch_size=batch_size
        )
        self._writer.start()

    def _open(self, data_dir: Path, busy_timeout: float) -> None:
        self._db = open_db(data_dir)  # WAL, synchronous=NORMAL, migrated; ConfigError if not
        self._conn = self._db.conn
        # Short: a locked database is retried by the writer, which logs and can give up at close.
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")

    def _close_db(self) -> None:
        self._db.close()

    def _row(self, record: UsageRecord) -> _Row:
        """The row's values; ``row[1]`` is the request id (``_settle`` reads it)."""
        return _row(record)

    def record(self, record: UsageRecord) -> None:
        """Queue one row; when the queue is full, wait ``block_timeout`` at most, then drop it."""
        row = self._row(record)  # a snapshot: the record may still be touched after this call
        self._pending.add(record.request_id)  # before the writer can see it
        # Waiting absorbs a burst; once a row was dropped in the last second the writer is
        # stuck (a locked database), and waiting on every request would stall the loop.
        stuck = time.monotonic() < self._stuck_until
        if not self._writer.put(row, timeout=0 if stuck else self._block_timeout):
            self._pending.discard(record.request_id)
            self._stuck_until = time.monotonic() + 1.0
            self._drop(1)

    async def committed(self, request_id: str) -> None:
        """Return once the row of ``request_id`` is committed, or was never recorded.

        Waits ``answer_timeout`` at most, and not at all while the database refuses writes:
        a slow log must not hold every answer back.
        """
        with self._pending_lock:
            if request_id not in self._pending or self._retrying:
                return
            done = asyncio.get_running_loop().create_future()
            self._waiting[request_id] = done
        try:
            async with asyncio.timeout(self._answer_timeout):
                await done
        except TimeoutError:
            pass
        finally:
            with self._pending_lock:
                self._waiting.pop(request_id, None)

    def _drop(self, n: int) -> None:
        with self._drop_lock:
            self.dropped += n
            total = self.dropped
        if total == n or total // 1000 != (total - n) // 1000:  # the first, then every 1000th
            log.error("usage log full or closed: %d records dropped so far", total)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is committed (or given up); False on timeout."""
        return self._writer.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (retrying a locked database for ``timeout``), then stop."""
        if self._writer.closed:
            return
        self._give_up_at = time.monotonic() + timeout
        late = self._writer.close(timeout)
        if late:
            self._drop(len(late))
        self._close_db()

    def _write(self, batch: list[_Row]) -> None:
        try:
            self._commit(batch)
        finally:
            self._settle(batch)

    def _settle(self, batch: list[_Row]) -> None:
        """Wake the answers waiting for ``batch`` (committed or given up) on their loops."""
        woken: list[asyncio.Future[None]] = []
        with self._pending_lock:
            for row in batch:
                request_id = str(row[1])
                self._pending.discard(request_id)
                future = self._waiting.pop(request_id, None)
                if future is not None:
                    woken.append(future)
        for future in woken:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody is waiting
                future.get_loop().call_soon_threadsafe(_wake, future)

    def _commit(self, batch: list[_Row]) -> None:
        """Insert ``batch`` in one transaction; retry while the database is busy or unwell."""
        delay = 0.01
        while True:
            try:
                with transaction(self._conn) as conn:
                    conn.executemany(_INSERT, batch)
                self.written += len(batch)
                self._retrying = False
                return
            except sqlite3.OperationalError as exc:  # locked past busy_timeout, I/O, disk full
                if time.monotonic() + delay > self._give_up_at:
                    self.failed += len(batch)
                    log.error("usage log: %d records lost at shutdown: %s", len(batch), exc)
                    return
                if not self._retrying:
                    log.warning("usage log: cannot write yet, retrying: %s", exc)
                    self._retrying = True
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except sqlite3.Error:  # a row the table refuses: keep the others
                if len(batch) == 1:
                    self.failed += 1
                    log.exception("usage log: record %s cannot be stored", batch[0][1])
                    return
                for row in batch:
                    self._commit([row])
                return


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # not timed out meanwhile
        future.set_result(None)


COLUMNS = _COLUMNS = (
    "time, request_id, key_id, alias, upstream, tried, stream, outcome, prompt_tokens, "
    "completion_tokens, ttft_ms, queue_ms, duration_ms, overflow, notes, cache, cached_tokens, "
    "usage_source, currency, cost_micros, report_currency, report_cost_micros, first_choice, "
    "first_choice_cost_micros"
)
_INSERT = f"INSERT INTO usage ({_COLUMNS}) VALUES ({', '.join('?' * 24)})"
_Row = tuple[object, ...]


def _row(r: UsageRecord) -> _Row:
    when = timestamp(datetime.fromtimestamp(r.started, UTC))
    tried, notes = orjson.dumps(r.tried).decode(), orjson.dumps(r.notes).decode()
    prompt, completion = r.upstream_tokens()
    return (when, r.request_id, r.key_id, r.alias, r.upstream, tried, r.stream, r.outcome,
            prompt, completion, r.ttft_ms, r.queue_ms, r.duration_ms,
            r.overflow, notes, r.cache, r.cached_tokens, r.usage_source, r.currency,
            r.cost_micros, r.report_currency, r.report_cost_micros, r.first_choice,
            r.first_choice_cost_micros)  # fmt: skip


# --- Reading it back ---------------------------------------------------------------------------

# What a group is, as SQL over `usage`; NULL becomes the label in brackets.
GROUPS = {
    "key": "key_id", "model": "alias", "upstream": "upstream", "day": "substr(time, 1, 10)",
    "group": "key_groups.name",
}  # fmt: skip
NONE_LABEL = {
    "key": "(no key)", "model": "(none)", "upstream": "(none)", "day": "(none)",
    "group": "(no group)",
}  # fmt: skip
# A row counts for the group its key is in now (key groups: nobusy.store.key_groups).
_JOINS = {
    "group": "LEFT JOIN keys ON keys.id = usage.key_id "
    "LEFT JOIN key_groups ON key_groups.id = keys.group_id"
}
# Outcomes are error codes (or ok / client_gone): a code nobusy answers with a 4xx means the
# request was refused (limits, quota, a bad request); any other code means it failed.
_CLIENT_CODES = {
    cls.code
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, NobusyError) and cls.status_code < 500
}


@dataclass
class Group:
    """One group of usage rows: its requests by outcome, tokens and latency."""

    label: str
    requests: int = 0
    answered: int = 0
    rejected: int = 0
    failed: int = 0
    left: int = 0  # the client went away before the end of the answer
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_ms_total: float = 0.0
    ttfts: list[float] = field(default_factory=list)  # sorted
    # Money, in micro-units of the reporting currency: what the rows cost, what the same
    # tokens would have cost on each alias's first-choice route; cache hits; rows whose
    # tokens nobusy counted because the upstream reported none.
    cost_micros: int = 0
    first_choice_cost_micros: int = 0
    cached_tokens: int = 0
    counted: int = 0

    @property
    def mean_queue_ms(self) -> float:
        return self.queue_ms_total / self.requests if self.requests else 0.0


def summarize(conn: Any, by: str, since: datetime | None) -> list[Group]:
    """The usage rows since ``since`` (all if None) grouped ``by`` key, model or upstream."""
    column = GROUPS[by]
    where, params = ("WHERE usage.time >= ?", [timestamp(since)]) if since else ("", [])
    groups: dict[str | None, Group] = {}
    counts = conn.execute(
        # Portable SQL (SQLite and PostgreSQL): CAST keeps PostgreSQL's sums integers.
        f"SELECT {column}, outcome, COUNT(*), CAST(SUM(prompt_tokens) AS BIGINT), "
        f"CAST(SUM(completion_tokens) AS BIGINT), COALESCE(SUM(queue_ms), 0.0), "
        f"CAST(SUM(report_cost_micros) AS BIGINT), "
        f"CAST(SUM(COALESCE(first_choice_cost_micros, report_cost_micros)) AS BIGINT), "
        f"CAST(SUM(cached_tokens) AS BIGINT), "
        f"CAST(SUM(CASE WHEN usage_source = 'counted' THEN 1 ELSE 0 END) AS BIGINT) "
        f"FROM usage {_JOINS.get(by, '')} {where} GROUP BY {column}, outcome",
        params,
    )
    for name, outcome, n, prompt, completion, queue_ms, cost, first, cached, counted in counts:
        group = groups.setdefault(name, Group(name or NONE_LABEL[by]))
        group.cost_micros += cost
        group.first_choice_cost_micros += first
        group.cached_tokens += cached
        group.counted += counted
        group.requests += n
        group.prompt_tokens += prompt
        group.completion_tokens += completion
        group.queue_ms_total += queue_ms
        if outcome == "ok":
            group.answered += n
        elif outcome == "client_gone":
            group.left += n
        elif outcome in _CLIENT_CODES:
            group.rejected += n
        else:
            group.failed += n
    ttft_where = f"{where} AND ttft_ms IS NOT NULL" if where else "WHERE ttft_ms IS NOT NULL"
    ttfts = conn.execute(
        f"SELECT {column}, ttft_ms FROM usage {_JOINS.get(by, '')} {ttft_where} ORDER BY ttft_ms",
        params,
    )
    for name, ttft_ms in ttfts:
        groups[name].ttfts.append(ttft_ms)
    if by == "key":
        names = dict(conn.execute("SELECT id, name FROM keys").fetchall())
        for key_id, group in groups.items():
            if key_id in names:
                group.label = f"{names[key_id]} ({key_id})"
    if by == "day":
        return sorted(groups.values(), key=lambda g: g.label)
    return sorted(groups.values(), key=lambda g: (-g.requests, g.label))


def key_usage(data_dir: Path, since: datetime) -> list[dict[str, Any]]:
    """Requests and tokens per key since ``since``, busiest first; [] when it cannot be read."""
    path = data_dir / DB_NAME
    if not path.exists():
        return []
    # Read-only and separate from the writers' connection: this must never take a write lock.
    try:
        with closing(read_only(path, timeout=1)) as conn:
            return key_usage_rows(conn, since)
    except sqlite3.OperationalError:  # not migrated yet, or busy past the timeout: skip a beat
        return []


def key_usage_rows(conn: Any, since: datetime) -> list[dict[str, Any]]:
    """``key_usage`` read through ``conn`` (SQLite, or PostgreSQL through ``Qmark``)."""
    rows = conn.execute(
        "SELECT usage.key_id, keys.name, COUNT(*), "
        "CAST(SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END) AS BIGINT), "
        "CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(completion_tokens) AS BIGINT) FROM usage "
        "LEFT JOIN keys ON keys.id = usage.key_id WHERE time >= ? "
        "GROUP BY usage.key_id, keys.name ORDER BY COUNT(*) DESC",
        [timestamp(since)],
    ).fetchall()
    return [
        {
            "key_id": key_id,
            "name": name,
            "requests": n,
            "ok": ok,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
        }
        for key_id, name, n, ok, prompt, completion in rows
    ]
