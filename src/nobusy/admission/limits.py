"""Each key's own limits: requests and tokens per minute, requests at once, model list, quota.

Tokens per minute are estimated at admission from the prompt (about four bytes a token plus
the answer allowance) and corrected by the real usage when the request ends. Exceeding a limit
is a 429 whose message names the limit and when it resets, with ``Retry-After``.

The checks are here; the counters live behind ``nobusy.store.interfaces.LimitCounters``:
``KeyLimits`` in the process (one worker), ``nobusy.store.limits.SharedKeyLimits`` in
``nobusy.db`` so that several worker processes enforce one limit, and
``nobusy.store.redis_limits.RedisKeyLimits`` in Redis so that several replicas do.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from nobusy.errors import ModelNotAllowed, QuotaExhausted, RateLimited
from nobusy.keys import Key

__all__ = [
    "WINDOW",
    "KeyLimits",
    "Window",
    "check_counts",
    "check_key",
    "estimate_tokens",
    "limited",
]

WINDOW = 60.0  # seconds: the window of rpm and tpm


def estimate_tokens(body_size: int, max_tokens: int | None) -> int:
    """A deliberately simple estimate: prompt bytes / 4, plus the answer allowance."""
    return body_size // 4 + (max_tokens or 256)


def check_key(key: Key, alias: str) -> None:
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


def check_counts(
    key: Key,
    in_flight: int,
    requests: int,
    tokens: int,
    oldest: float | None,
    estimate: int,
    now: float,
) -> None:
    reset = (oldest + WINDOW - now) if oldest is not None else WINDOW
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


def limited(key: Key) -> bool:
    return key.rpm is not None or key.tpm is not None or key.max_concurrency is not None


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0
    in_flight: int = 0

    def prune(self, now: float) -> None:
        horizon = now - WINDOW
        while self.requests and self.requests[0] < horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] < horizon:
            self.token_sum -= self.tokens.popleft()[1]


Window = _Usage  # the same sliding window counts an upstream's rpm and tpm (admission.rates)


class KeyLimits:
    """The per-key counters of this process (one worker)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._usage: dict[str, _Usage] = {}

    async def admit(self, key: Key, alias: str, estimate: int) -> None:
        """Count the request in, or raise the error naming the limit it hits."""
        check_key(key, alias)
        now = self.clock()
        usage = self._usage.setdefault(key.id, _Usage())
        usage.prune(now)
        oldest = usage.requests[0] if usage.requests else None
        check_counts(
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
