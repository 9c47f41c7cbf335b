"""One request's use of the response cache, on the pipeline's path.

``CacheUse.open`` decides whether the request may use the cache at all: the alias's cache is
enabled, and the request asks for a deterministic answer (``temperature: 0``) or the client
sends ``x-nobusy-cache: use``; ``skip`` leaves the cache out entirely, ``refresh`` asks the
upstreams again and keeps their answer (a stale answer may still stand in if none can
answer). ``fresh`` answers before any upstream is asked; ``stale`` when none could answer
(``STALE_ON``). An answer from upstreams is kept only when it ended well (``record`` sees
every chunk before PII is put back, ``watch`` sees how the client's answer, filtered, ended;
``settle`` keeps it once the request's books say ``ok``): never a cut answer, an error, or
one the output guard ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from nobusy.cache.memory import ResponseCache, compact
from nobusy.cache.policy import CacheSettings, cache_key, mode
from nobusy.errors import AllUpstreamsFailed, QueueFull, QueueTimeout
from nobusy.schema import ChatRequest
from nobusy.store.usage import UsageRecord
from nobusy.upstreams.base import Chunk

__all__ = ["STALE_NOTE", "STALE_ON", "CacheUse", "Kept", "after", "replay"]

# nobusy itself cannot answer: no upstream could, or the queue cannot admit within the
# patience. A key's own limits (RateLimited, QuotaExhausted) are not among them: they are the
# operator's word, not an outage.
STALE_ON = (AllUpstreamsFailed, QueueFull, QueueTimeout)

# Said before a stale answer, as the protocol's comment (SSE clients) beside the header.
STALE_NOTE = "nobusy: no upstream could answer; this is a cached answer past its freshness (stale)"

# How an answer may end to be kept: complete (a stop, tool calls, or the max_tokens asked for).
_KEPT_ENDINGS = frozenset({"stop", "tool_calls", "length"})


@dataclass(slots=True)
class CacheUse:
    """The cache as one request uses it: its key, whether it may read, what it found."""

    cache: ResponseCache
    settings: CacheSettings
    key: str
    read: bool = True  # False for `refresh`: ask the upstreams, keep their answer
    status: str = "miss"  # for the x-nobusy-cache response header and the usage row
    _parts: list[bytes] = field(default_factory=list)
    _complete: bool = False
    _ending: str | None = None

    @classmethod
    def open(
        cls,
        cache: ResponseCache | None,
        settings: CacheSettings,
        headers: Any,
        chat: ChatRequest,
        body: dict[str, Any],
        key_id: str | None,
        pii: BaseModel,
        knowledge: BaseModel | None = None,
    ) -> CacheUse | None:
        """The request's use of the cache, or None: not cached (400 for a bad header)."""
        asked = mode(headers)
        if cache is None or not settings.enabled or asked == "skip":
            return None
        if asked is None and chat.temperature != 0:
            return None
        scope = "*" if settings.scope == "shared" else (key_id or "-")
        return cls(cache, settings, cache_key(body, scope, pii, knowledge), read=asked != "refresh")

    async def fresh(self) -> list[Chunk] | None:
        """The kept answer within ``ttl``, or None (counted as a miss)."""
        found = await self.cache.get(self.key, self.settings.ttl) if self.read else None
        if found is None:
            self.cache.misses += 1
            return None
        self.cache.hits += 1
        self.status = "hit"
        return found

    async def stale(self) -> list[Chunk] | None:
        """The kept answer within ``ttl + stale_if_error``, for a request nobusy cannot
        answer otherwise; None when there is none or stale answers are off."""
        if self.settings.stale_if_error <= 0:
            return None
        found = await self.cache.get(self.key, self.settings.ttl + self.settings.stale_if_error)
        if found is not None:
            self.cache.stale += 1
            self.status = "stale"
        return found

    async def record(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """``chunks`` passed on, each also copied (as JSON) for keeping."""
        parts = self._parts
        async for chunk in chunks:
            if "nobusy_note" not in chunk:  # a continuation's note: not part of the answer
                parts.append(compact(chunk))
            yield chunk
        self._complete = True

    async def watch(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """``chunks`` passed on, noting how the answer the client gets ends."""
        async for chunk in chunks:
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    self._ending = choice["finish_reason"]
            yield chunk

    def settle(self, record: UsageRecord) -> None:
        """Once the request's books close: keep the answer if it came whole from upstream."""
        record.cache = self.status
        if not self._complete or record.outcome != "ok" or self._ending not in _KEPT_ENDINGS:
            return
        settings = self.settings
        self.cache.put(self.key, self._parts, settings.ttl + settings.stale_if_error)
        self._parts = []


async def replay(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    """A kept answer as the chunk stream an upstream would give."""
    for chunk in chunks:
        yield chunk


class Kept:
    """A kept answer's chunks, as the relay reads an answer (``routing.relay.Chunked``)."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: AsyncIterator[Chunk]) -> None:
        self.chunks = chunks


async def after(first: bytes, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``first``, then ``events`` (closed with this stream)."""
    try:
        yield first
        async for part in events:
            yield part
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
