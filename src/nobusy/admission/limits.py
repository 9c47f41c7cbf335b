"""Each key's own limits: requests and tokens per minute, requests at once, model list, quota.

Tokens per minute are estimated at admission from the prompt (about four bytes a token plus
the answer allowance) and corrected by the real usage when the request ends. Exceeding a limit
is a 429 whose message names the limit and when it resets, with ``Retry-After``.

Two stores keep the counters behind one interface: ``KeyLimits`` in the process (one worker),
``SharedKeyLimits`` in ``nobusy.db`` so that several worker processes enforce one limit. A
Redis-backed store would be a third implementation of the same three methods.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from nobusy.admission.shared import process_alive
from nobusy.db import open_db
from nobusy.errors import ModelNotAllowed, QuotaExhausted, RateLimited, StorageUnavailable
from nobusy.keys import Key

__all__ = ["KeyLimits", "Limits", "SharedKeyLimits", "estimate_tokens"]

_WINDOW = 60.0


class Limits(Protocol):
    """What the request path needs from a store of per-key counters."""

    async def admit(self, key: Key, alias: str, estimate: int) -> None: ...

    def done(self, key_id: str, estimate: int, actual: int) -> None: ...

    def close(self) -> None: ...


def estimate_tokens(body_size: int, max_tokens: int | None) -> int:
    """A deliberately simple estimate: prompt bytes / 4, plus the answer allowance."""
    return body_size // 4 + (max_tokens or 256)


def _check_key(key: Key, alias: str) -> None:
    if not key.allows_model(alias):
        allowed = ", ".join(key.models or ())
        raise ModelNotAllowed(
            f"Key '{key.name}' may not use model '{alias}' (allowed: {allowed}).", param="model"
        )
    if key.balance is not None and key.balance <= 0:
        raise QuotaExhausted(
            f"Key '{key.name}' has used its token quota ({key.quota_tokens}); "
            "top it up to continue."
        )


def _check_counts(
    key: Key,
    in_flight: int,
    requests: int,
    tokens: int,
    oldest: float | None,
    estimate: int,
    now: float,
) -> None:
    reset = (oldest + _WINDOW - now) if oldest is not None else _WINDOW
    if key.max_concurrency is not None and in_flight >= key.max_concurrency:
        raise RateLimited(
            f"Key '{key.name}' already has {in_flight} requests in flight "
            f"(max_concurrency {key.max_concurrency}); retry when one finishes.",
            retry_after=1,
        )
    if key.rpm is not None and requests >= key.rpm:
        raise RateLimited(
            f"Key '{key.name}' reached its limit of {key.rpm} requests per minute; "
            f"it resets in {reset:.0f}s.",
            retry_after=reset,
        )
    if key.tpm is not None and requests and tokens + estimate > key.tpm:
        raise RateLimited(
            f"Key '{key.name}' reached its limit of {key.tpm} tokens per minute; "
            f"it resets in {reset:.0f}s.",
            retry_after=reset,
        )


def _limited(key: Key) -> bool:
    return key.rpm is not None or key.tpm is not None or key.max_concurrency is not None


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0
    in_flight: int = 0

    def prune(self, now: float) -> None:
        horizon = now - _WINDOW
        while self.requests and self.requests[0] < horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] < horizon:
            self.token_sum -= self.tokens.popleft()[1]


class KeyLimits:
    """The per-key counters of this process (one worker)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._usage: dict[str, _Usage] = {}

    async def admit(self, key: Key, alias: str, estimate: int) -> None:
        """Count the request in, or raise the error naming the limit it hits."""
        _check_key(key, alias)
        now = self.clock()
        usage = self._usage.setdefault(key.id, _Usage())
        usage.prune(now)
        oldest = usage.requests[0] if usage.requests else None
        _check_counts(
            key, usage.in_flight, len(usage.requests), usage.token_sum, oldest, estimate, now
        )
        usage.requests.append(now)
        usage.tokens.append((now, estimate))
        usage.token_sum += estimate
        usage.in_flight += 1

    def done(self, key_id: str, estimate: int, actual: int) -> None:
        """The request ended: free its concurrency slot and replace the estimate by usage."""
        usage = self._usage.get(key_id)
        if usage is None:
            return
        usage.in_flight -= 1
        correction = actual - estimate
        usage.tokens.append((self.clock(), correction))
        usage.token_sum += correction

    def close(self) -> None:
        return None


class SharedKeyLimits:
    """The same counters in ``nobusy.db``, so every worker process sees every request.

    Each admission of a key with a limit is one short transaction on a thread of its own (the
    event loop never waits on SQLite's lock). Requests in flight are counted per process, and
    counts of processes that died are ignored, so a crashed worker cannot hold slots forever.
    """

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.pid = os.getpid()
        self._db = open_db(data_dir)
        self._conn = self._db.conn
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nobusy-limits")

    async def admit(self, key: Key, alias: str, estimate: int) -> None:
        _check_key(key, alias)
        if not _limited(key):
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._admit, key, estimate)

    def _admit(self, key: Key, estimate: int) -> None:
        now = self.clock()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "DELETE FROM key_window WHERE key_id = ? AND at < ?", (key.id, now - _WINDOW)
                )
                requests, tokens, oldest = conn.execute(
                    "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(tokens), 0), "
                    "MIN(CASE WHEN requests > 0 THEN at END) FROM key_window WHERE key_id = ?",
                    (key.id,),
                ).fetchone()
                in_flight = sum(
                    n
                    for pid, n in conn.execute(
                        "SELECT pid, n FROM key_in_flight WHERE key_id = ?", (key.id,)
                    )
                    if process_alive(pid)
                )
                _check_counts(key, in_flight, requests, tokens, oldest, estimate, now)
                conn.execute(
                    "INSERT INTO key_window (key_id, at, requests, tokens) VALUES (?, ?, 1, ?)",
                    (key.id, now, estimate),
                )
                conn.execute(
                    "INSERT INTO key_in_flight (key_id, pid, n) VALUES (?, ?, 1) "
                    "ON CONFLICT (key_id, pid) DO UPDATE SET n = n + 1",
                    (key.id, self.pid),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"rate limits unavailable: {exc}") from None

    def done(self, key_id: str, estimate: int, actual: int) -> None:
        self._executor.submit(self._done, key_id, estimate, actual)

    def _done(self, key_id: str, estimate: int, actual: int) -> None:
        try:
            with self._conn:
                self._conn.execute(
                    "UPDATE key_in_flight SET n = MAX(n - 1, 0) WHERE key_id = ? AND pid = ?",
                    (key_id, self.pid),
                )
                self._conn.execute(
                    "INSERT INTO key_window (key_id, at, requests, tokens) VALUES (?, ?, 0, ?)",
                    (key_id, self.clock(), actual - estimate),
                )
        except sqlite3.Error:
            pass  # a correction lost to a locked database only makes the window estimate stand

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._conn.close()
