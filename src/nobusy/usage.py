"""Every accepted chat request leaves one usage record, written when it ends however it ends.

The foundation writes JSON lines to ``$NOBUSY_DATA_DIR/usage.jsonl``; the admission issue moves
this behind the same ``record`` call into SQLite with keys and quotas.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import orjson

from nobusy.metrics import Metrics

__all__ = ["Ledger", "UsageLog", "UsageRecord"]


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
    """Closes a request's books: its usage record to the log, its figures to the metrics."""

    def __init__(self, log: UsageLog, metrics: Metrics) -> None:
        self.log = log
        self.metrics = metrics

    def close(self, record: UsageRecord, started: float, first_token_at: float | None) -> None:
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
