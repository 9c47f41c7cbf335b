"""The response cache: an identical request answered again without an upstream, and an answer
kept earlier served (marked stale) when no upstream can answer at all.

``policy`` says whether a request may use the cache and what its key is; ``memory`` is the
bounded in-process LRU in front of a shared store (``store.response_cache`` in SQLite on one
host, ``store.redis_cache`` in Redis for a fleet); ``use`` is one request's use of it on the
pipeline's path (``protocols.pipeline``), whatever client protocol it spoke.
"""

from nobusy.cache.policy import CacheSettings

__all__ = ["CacheSettings"]
