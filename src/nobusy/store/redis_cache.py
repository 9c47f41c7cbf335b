"""``RedisCache``: the response cache's entries in the Redis that ``state`` names, so every
replica answers from what any of them kept (``cache.ResponseCache`` keeps recent ones in
memory in front).

An entry is one string, ``nobusy:cache:<key>``, expiring with Redis's own TTL. Redis away
never fails a request: a lookup that fails or takes longer than ``bounded`` allows is a miss,
a write that fails is dropped, and after a failure Redis is left alone for ``_PAUSE``
seconds, so that a Redis that hangs costs one request a timeout, not every request.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nobusy.store.redis_client import ERRORS, bounded, connect, redact, scrub

__all__ = ["PREFIX", "RedisCache"]

PREFIX = "nobusy:cache:"
_PAUSE = 5.0

log = logging.getLogger("nobusy")


class RedisCache:
    """Entries by key in Redis, each expiring ``keep`` seconds after its write."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client = connect(url)
        self._paused_until = 0.0
        self._writes: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> bytes | None:
        if time.monotonic() < self._paused_until:
            return None
        try:
            value = await bounded(self._client.get(PREFIX + key))
        except ERRORS as exc:
            self._failed("reading", exc)
            return None
        return None if value is None else value if isinstance(value, bytes) else value.encode()

    def put(self, key: str, value: bytes, keep: float) -> None:
        if time.monotonic() < self._paused_until:
            return
        task = asyncio.create_task(self._set(key, value, keep))
        self._writes.add(task)  # a reference until done: the loop keeps only weak ones
        task.add_done_callback(self._writes.discard)

    async def _set(self, key: str, value: bytes, keep: float) -> None:
        try:
            await bounded(self._client.set(PREFIX + key, value, px=max(1, int(keep * 1000))))
        except ERRORS as exc:
            self._failed("writing", exc)

    def _failed(self, doing: str, exc: BaseException) -> None:
        self._paused_until = time.monotonic() + _PAUSE
        log.warning(
            "response cache: %s Redis at %s failed (%s); the cache skips Redis for %.0fs",
            doing, redact(self._url), scrub(str(exc) or type(exc).__name__, self._url), _PAUSE,
        )  # fmt: skip

    async def aclose(self) -> None:
        for task in list(self._writes):
            task.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)
        await self._client.aclose()
