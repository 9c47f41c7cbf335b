"""``KnowledgeStats``: what this process's knowledge base did, counted in memory.

Files ingested by outcome (and failures by ``last_error`` code), their bytes and chunks, the
seconds each stage took, searches by where they came from and how long they took, expired
files swept. ``/metrics`` reads a ``snapshot`` when scraped (``nobusy.metrics``), so a scrape
never waits on the records' database. Every label is a fixed set (outcomes, error codes,
stages, sources): store and file ids are never counted apart, which would grow without bound.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

__all__ = [
    "ERROR_CODES",
    "INGEST_BUCKETS",
    "OUTCOMES",
    "SEARCH_BUCKETS",
    "SOURCES",
    "STAGES",
    "KnowledgeStats",
    "Snapshot",
    "Timings",
]

# A file takes from a fraction of a second (a short note) to many minutes (a large PDF on CPU).
INGEST_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
SEARCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# completed; failed (with a last_error); cancelled: the file left its store, or its batch was
# cancelled, while a worker had it (its chunks are taken back out).
OUTCOMES = ("completed", "failed", "cancelled")
ERROR_CODES = ("invalid_file", "unsupported_file", "server_error")  # parsers.ErrorCode + ours
STAGES = ("parse", "chunk", "embed", "index")
SOURCES = ("api", "grounding")  # vector store search; passages for a grounded answer


@dataclass(slots=True)
class Timings:
    """A histogram kept as counts per bucket (the last one past every bound) and their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        # Prometheus buckets are "less than or equal": a value on a bound counts in that bucket.
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def copy(self) -> Timings:
        return Timings(self.bounds, list(self.counts), self.total)


@dataclass(slots=True)
class Snapshot:
    """The figures at one moment, copied out of the lock."""

    files: dict[str, int]
    failures: dict[str, int]
    bytes: int
    chunks: int
    ingest_seconds: dict[str, Timings]
    stage_seconds: dict[str, float]
    searches: dict[tuple[str, str], int]
    search_seconds: dict[str, Timings]
    swept: int


class KnowledgeStats:
    """Counters the ingestion workers, searches and the sweeper add to (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = Snapshot(
            files=dict.fromkeys(OUTCOMES, 0),
            failures=dict.fromkeys(ERROR_CODES, 0),
            bytes=0,
            chunks=0,
            ingest_seconds={outcome: Timings(INGEST_BUCKETS) for outcome in OUTCOMES},
            stage_seconds=dict.fromkeys(STAGES, 0.0),
            searches={(s, o): 0 for s in SOURCES for o in ("ok", "error")},
            search_seconds={source: Timings(SEARCH_BUCKETS) for source in SOURCES},
            swept=0,
        )

    def ingested(
        self,
        outcome: str,
        seconds: float,
        *,
        code: str | None = None,
        size: int = 0,
        chunks: int = 0,
    ) -> None:
        """One file ended: ``outcome``, after ``seconds``; ``size`` bytes in ``chunks`` chunks
        when completed, ``code`` its ``last_error`` code when failed."""
        with self._lock:
            now = self._now
            now.files[outcome] += 1
            now.ingest_seconds[outcome].observe(seconds)
            if code is not None:
                # An unknown code counts as ours rather than adding a label value.
                key = code if code in now.failures else "server_error"
                now.failures[key] += 1
            now.bytes += size
            now.chunks += chunks

    def staged(self, stage: str, seconds: float) -> None:
        """Time spent in one stage of a file's ingestion."""
        with self._lock:
            self._now.stage_seconds[stage] += seconds

    def searched(self, source: str, seconds: float, *, ok: bool) -> None:
        """One store searched for ``source``, in ``seconds``."""
        with self._lock:
            self._now.searches[(source, "ok" if ok else "error")] += 1
            self._now.search_seconds[source].observe(seconds)

    def swept_files(self, count: int) -> None:
        with self._lock:
            self._now.swept += count

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = self._now
            return Snapshot(
                files=dict(now.files),
                failures=dict(now.failures),
                bytes=now.bytes,
                chunks=now.chunks,
                ingest_seconds={k: t.copy() for k, t in now.ingest_seconds.items()},
                stage_seconds=dict(now.stage_seconds),
                searches=dict(now.searches),
                search_seconds={k: t.copy() for k, t in now.search_seconds.items()},
                swept=now.swept,
            )
