"""``ResponseCache``: kept answers in a bounded in-process LRU, in front of a shared store.

An entry is the internal answer (the chunks an answer stream yielded, before PII is put back
and the output guard runs) with the time it was kept, as JSON bytes: the bytes are what every
tier holds, and each hit decodes its own copy, which the relay may then rewrite. A lookup
asks the memory first, then the store (SQLite on one host, Redis for a fleet); an entry the
store had is remembered in memory. How old an entry may be is decided at lookup, from the
alias's settings then in force, so one entry serves as a hit within ``ttl`` and as a stale
answer within ``ttl + stale_if_error``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from nobusy.store.interfaces import CacheStore

__all__ = ["MAX_ENTRY_BYTES", "ResponseCache", "compact"]

# An answer larger than this is not kept: one entry must not push hundreds out of memory.
MAX_ENTRY_BYTES = 1 << 20
# Fields every chunk carries that the relay rewrites anyway: not kept.
_REWRITTEN = ("id", "model", "created")


class ResponseCache:
    """Kept answers by key: at most ``entries`` of them and ``max_bytes`` in memory, all of
    them in ``store``."""

    def __init__(
        self,
        entries: int,
        store: CacheStore | None = None,
        *,
        max_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.capacity = entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._memory: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._clock = clock
        # Running totals for the status board and /metrics.
        self.hits = self.misses = self.stale = self.kept = 0

    def __len__(self) -> int:
        return len(self._memory)

    async def get(self, key: str, within: float) -> list[dict[str, Any]] | None:
        """The chunks kept under ``key`` at most ``within`` seconds ago, or None."""
        now = self._clock()
        found = self._memory.get(key)
        if (found is None or now - found[0] > within) and self.store is not None:
            # Another process (a replica, a worker) may have kept a newer answer.
            data = await self.store.get(key)
            if data is not None:
                at = float(orjson.loads(data)["at"])
                if found is None or at > found[0]:
                    found = (at, data)
                    self._remember(key, at, data)
        if found is None or now - found[0] > within:
            return None
        self._memory.move_to_end(key)
        chunks: list[dict[str, Any]] = orjson.loads(found[1])["chunks"]
        return chunks

    def put(self, key: str, chunks: list[bytes], keep: float) -> None:
        """Keep ``chunks`` (each a chunk as JSON) under ``key``; the store keeps them
        ``keep`` seconds."""
        at = self._clock()
        data = b'{"at":%s,"chunks":[%s]}' % (repr(at).encode(), b",".join(chunks))
        if len(data) > MAX_ENTRY_BYTES:
            return
        self.kept += 1
        self._remember(key, at, data)
        if self.store is not None:
            self.store.put(key, data, keep)

    def _remember(self, key: str, at: float, data: bytes) -> None:
        old = self._memory.pop(key, None)
        if old is not None:
            self.bytes -= len(old[1])
        self._memory[key] = (at, data)
        self.bytes += len(data)
        while len(self._memory) > self.capacity or self.bytes > self.max_bytes:
            _, (_, gone) = self._memory.popitem(last=False)
            self.bytes -= len(gone)

    async def aclose(self) -> None:
        if self.store is not None:
            await self.store.aclose()


def compact(chunk: dict[str, Any]) -> bytes:
    """A chunk as kept: JSON, without the fields the relay rewrites for each answer."""
    return orjson.dumps({k: v for k, v in chunk.items() if k not in _REWRITTEN})
