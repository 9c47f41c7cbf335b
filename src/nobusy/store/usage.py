"""Every accepted chat request leaves one usage record, written when it ends however it ends.

Records go to the ``usage`` table of ``data_dir/nobusy.db`` (see ``nobusy.db``), through a
bounded queue and one writer thread, so the event loop never waits for SQLite; ``nobusy usage``
reads them back. ``CommittedAnswers`` holds a response's last byte until its row is committed:
an answer a client received is then never missing from the log, even after a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nobusy.audit import AuditLog
from nobusy.db import open_db, timestamp
from nobusy.errors import NobusyError
from nobusy.guard import Hit
from nobusy.keys import KeyStore
from nobusy.message import MessageBuilder
from nobusy.metrics import Metrics

__all__ = ["USAGE_LOG", "CommittedAnswers", "Exchange", "Ledger", "UsageLog", "UsageRecord"]

log = logging.getLogger("nobusy")

USAGE_LOG = "usage_log"  # its name in the lifespan state, where CommittedAnswers finds it


@dataclass(slots=True)
class Exchange:
    """What the audit log keeps of one request: the request, the answer as the client received
    it (content, reasoning and tool calls), the filter's hits."""

    request: dict[str, Any]
    answer: MessageBuilder = field(default_factory=MessageBuilder)
    hits: list[Hit] = field(default_factory=list)


@dataclass(slots=True)
class UsageRecord:
    """What one request cost and how it ended.

    ``outcome``: ``ok``; ``client_gone`` (the client left first, streaming or not: what the
    upstream produced until then is billed); the error's ``code`` (``queue_full``,
    ``all_upstreams_failed``...; ``internal_error`` for a bug); ``cancelled`` (server stopping).
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
        self._db = open_db(data_dir)  # WAL, synchronous=NORMAL, migrated; ConfigError if not
        self._conn = self._db.conn
        # Short: a locked database is retried by the writer, which logs and can give up at close.
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        self._batch_size, self._block_timeout = batch_size, block_timeout
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
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="nobusy-usage", daemon=True)
        self._thread.start()

    def record(self, record: UsageRecord) -> None:
        """Queue one row; when the queue is full, wait ``block_timeout`` at most, then drop it."""
        row = _row(record)  # a snapshot: the record may still be touched after this call
        self._pending.add(record.request_id)  # before the writer can see it
        try:
            if self._closed:
                raise queue.Full
            # Waiting absorbs a burst; once a row was dropped in the last second the writer is
            # stuck (a locked database), and waiting on every request would stall the loop.
            stuck = time.monotonic() < self._stuck_until
            self._queue.put(row, timeout=0 if stuck else self._block_timeout)
        except queue.Full:
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
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (retrying a locked database for ``timeout``), then stop."""
        if self._closed:
            return
        self._closed = True
        self._give_up_at = time.monotonic() + timeout
        # Room is made within timeout: the writer gives up on a locked database by then.
        self._queue.put(_STOP, timeout=timeout + 1)
        self._thread.join(timeout + 1)
        late = 0
        while not self._queue.empty():  # recorded while closing, after the stop
            late += isinstance(self._queue.get_nowait(), tuple)
        if late:
            self._drop(late)
        self._db.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[_Row] = []
            waiters: list[threading.Event] = []
            stop = False
            while True:
                if isinstance(item, tuple):
                    batch.append(item)
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    stop = True
                if stop or len(batch) >= self._batch_size:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)
                self._settle(batch)
            for waiter in waiters:
                waiter.set()
            if stop:
                return

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
                self._insert(batch)
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

    def _insert(self, batch: list[_Row]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, batch)
            conn.commit()
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise


class CommittedAnswers:
    """ASGI middleware: a response's last byte leaves once its usage row is committed.

    Inside ``RequestContextMiddleware`` (it reads the request id). The row is recorded before
    the last byte (``Ledger.close`` runs in the handler's ``finally``), so a client that got a
    whole answer knows it is on disk; the wait is the writer's next commit, about a millisecond.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state") or {}
        usage_log: UsageLog | None = state.get(USAGE_LOG)
        request_id: str | None = state.get("request_id")
        if scope["type"] != "http" or usage_log is None or request_id is None:
            await self.app(scope, receive, send)
            return

        async def send_committed(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await usage_log.committed(request_id)
            await send(message)

        await self.app(scope, receive, send_committed)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # not timed out meanwhile
        future.set_result(None)


_STOP = object()
_COLUMNS = (
    "time, request_id, key_id, alias, upstream, tried, stream, outcome, prompt_tokens, "
    "completion_tokens, ttft_ms, queue_ms, duration_ms, overflow, notes"
)
_INSERT = f"INSERT INTO usage ({_COLUMNS}) VALUES ({', '.join('?' * 15)})"
_Row = tuple[object, ...]


def _row(r: UsageRecord) -> _Row:
    when = timestamp(datetime.fromtimestamp(r.started, UTC))
    tried, notes = orjson.dumps(r.tried).decode(), orjson.dumps(r.notes).decode()
    return (when, r.request_id, r.key_id, r.alias, r.upstream, tried, r.stream, r.outcome,
            r.prompt_tokens, r.completion_tokens, r.ttft_ms, r.queue_ms, r.duration_ms,
            r.overflow, notes)  # fmt: skip


class Ledger:
    """Closes a request's books: usage record, metrics, and (if enabled) the audit log."""

    def __init__(
        self,
        log: UsageLog,
        metrics: Metrics,
        audit: AuditLog | None = None,
        keys: KeyStore | None = None,
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.audit = audit
        self.keys = keys
        # Quota charges are summed per key and written at most every half second: one SQLite
        # write per request would be the slowest step of the whole path.
        self._charges: dict[str, int] = {}
        self._last_flush = time.monotonic()

    def close(
        self,
        record: UsageRecord,
        started: float,
        first_token_at: float | None,
        exchange: Exchange | None = None,
    ) -> None:
        now = time.perf_counter()
        record.duration_ms = round((now - started) * 1000, 3)
        upstream = record.upstream or "none"
        m = self.metrics
        if first_token_at is not None:
            record.ttft_ms = round((first_token_at - started) * 1000, 3)
            m.ttft.labels(record.alias, upstream).observe(first_token_at - started)
        m.requests.labels(record.alias, upstream, record.outcome).inc()
        m.latency.labels(record.alias, upstream).observe(now - started)
        if record.prompt_tokens:
            m.tokens.labels(record.alias, upstream, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            m.tokens.labels(record.alias, upstream, "completion").inc(record.completion_tokens)
        if record.outcome not in ("ok", "client_gone"):
            m.errors.labels(record.alias, record.outcome).inc()
        self.log.record(record)
        if record.key_id is not None and self.keys is not None:
            tokens = record.prompt_tokens + record.completion_tokens
            self._charges[record.key_id] = self._charges.get(record.key_id, 0) + tokens
            if time.monotonic() - self._last_flush > 0.5:
                self.flush_charges()
        if self.audit is not None and exchange is not None:
            self._audit(record, exchange)

    def flush_charges(self) -> None:
        """Take the summed tokens off each key's balance."""
        self._last_flush = time.monotonic()
        charges, self._charges = self._charges, {}
        if self.keys is None:
            return
        for key_id, tokens in charges.items():
            try:
                self.keys.charge(key_id, tokens)
            except NobusyError:  # a locked database: keep the charge for the next flush
                self._charges[key_id] = self._charges.get(key_id, 0) + tokens

    def _audit(self, record: UsageRecord, exchange: Exchange) -> None:
        audit = self.audit
        assert audit is not None
        common = {"alias": record.alias, "upstream": record.upstream, "key_id": record.key_id}
        audit.append("request", record.request_id, exchange.request, **common)
        for hit in exchange.hits:
            audit.append(
                hit.action,
                record.request_id,
                {
                    "word": hit.word,
                    "matched": hit.matched,
                    "lexicon": hit.lexicon,
                    "category": hit.category,
                    "start": hit.start,
                    "end": hit.end,
                },
                **common,
            )
        audit.append(
            "response",
            record.request_id,
            {
                **_answer(exchange.answer.message()),
                "outcome": record.outcome,
                "tried": record.tried,
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
            },
            **common,
        )


def _answer(message: dict[str, Any]) -> dict[str, Any]:
    """The audited answer: its text (never null), and reasoning and tool calls when there."""
    out: dict[str, Any] = {
        key: message[key] for key in ("reasoning_content", "tool_calls") if key in message
    }
    return {"content": message["content"] or "", **out}
