"""Every accepted chat request leaves one usage record, written when it ends however it ends.

The foundation writes JSON lines to ``$NOBUSY_DATA_DIR/usage.jsonl``; the admission issue moves
this behind the same ``record`` call into SQLite with keys and quotas.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from nobusy.audit import AuditLog
from nobusy.errors import NobusyError
from nobusy.guard import Hit
from nobusy.keys import KeyStore
from nobusy.metrics import Metrics

__all__ = ["Exchange", "Ledger", "UsageLog", "UsageRecord"]


@dataclass(slots=True)
class Exchange:
    """What the audit log keeps of one request: the request, the answer, the filter's hits."""

    request: dict[str, Any]
    answer: list[str] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)


@dataclass(slots=True)
class UsageRecord:
    """What one request cost and how it ended."""

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
    """Append-only JSON-lines file; each record is flushed so a crash loses nothing answered."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "usage.jsonl"
        self._file: IO[bytes] | None = self.path.open("ab")

    def record(self, record: UsageRecord) -> None:
        if self._file is None:
            return
        self._file.write(orjson.dumps(asdict(record)) + b"\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
                "content": "".join(exchange.answer),
                "outcome": record.outcome,
                "tried": record.tried,
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
            },
            **common,
        )
