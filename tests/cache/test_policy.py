"""The cache's policy and memory in-process: which requests use it, what the key ignores,
scopes, the LRU bound, fresh and stale ages, and what is kept."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nobusy.cache.memory import ResponseCache
from nobusy.cache.policy import CacheSettings, cache_key
from nobusy.cache.use import CacheUse, replay
from nobusy.errors import InvalidRequest
from nobusy.guard.pii import PiiSettings
from nobusy.schema import ChatRequest
from nobusy.settings import AliasKnowledge
from nobusy.store.usage import UsageRecord

BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
PII = PiiSettings()
ON = CacheSettings(enabled=True, ttl=10, stale_if_error=100)


def chat(**extra: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=BODY["messages"], **extra)


def test_the_key_ignores_delivery_and_keeps_what_changes_the_answer() -> None:
    base = cache_key(BODY, "k1", PII)
    assert cache_key({**BODY, "stream": True, "user": "u", "metadata": {}}, "k1", PII) == base
    assert cache_key({**BODY, "temperature": 0}, "k1", PII) == cache_key(
        {**BODY, "temperature": 0.0}, "k1", PII
    )
    assert cache_key({**BODY, "max_completion_tokens": 5}, "k1", PII) == cache_key(
        {**BODY, "max_tokens": 5}, "k1", PII
    )
    for changed in ({"temperature": 0.5}, {"tools": [{"type": "function"}]}, {"seed": 1},
                    {"response_format": {"type": "json_object"}}, {"model": "other"}):  # fmt: skip
        assert cache_key({**BODY, **changed}, "k1", PII) != base
    assert cache_key(BODY, "k2", PII) != base
    assert cache_key(BODY, "k1", PiiSettings(enabled=True)) != base
    # The stores an alias answers from: attaching or detaching one changes the key.
    one, two = AliasKnowledge(stores=("vs_a",)), AliasKnowledge(stores=("vs_a", "vs_b"))
    assert cache_key(BODY, "k1", PII, one) != base
    assert cache_key(BODY, "k1", PII, one) != cache_key(BODY, "k1", PII, two)
    assert cache_key(BODY, "k1", PII, one) == cache_key(
        BODY, "k1", PII, AliasKnowledge(stores=("vs_a",))
    )


def test_who_uses_the_cache() -> None:
    cache = ResponseCache(10)
    off = CacheSettings()
    assert CacheUse.open(cache, off, {}, chat(temperature=0), BODY, None, PII) is None
    assert CacheUse.open(cache, ON, {}, chat(), BODY, None, PII) is None
    assert CacheUse.open(cache, ON, {}, chat(temperature=0), BODY, None, PII) is not None
    used = CacheUse.open(cache, ON, {"x-nobusy-cache": "use"}, chat(), BODY, None, PII)
    assert used is not None and used.read
    refresh = CacheUse.open(cache, ON, {"x-nobusy-cache": "refresh"}, chat(), BODY, None, PII)
    assert refresh is not None and not refresh.read
    skip = {"x-nobusy-cache": "Skip"}
    assert CacheUse.open(cache, ON, skip, chat(temperature=0), BODY, None, PII) is None
    with pytest.raises(InvalidRequest, match="use, skip, refresh"):
        CacheUse.open(cache, ON, {"x-nobusy-cache": "yes"}, chat(), BODY, None, PII)
    shared = CacheSettings(enabled=True, scope="shared")
    a = CacheUse.open(cache, shared, {}, chat(temperature=0), BODY, "a", PII)
    b = CacheUse.open(cache, shared, {}, chat(temperature=0), BODY, "b", PII)
    assert a is not None and b is not None and a.key == b.key
    a = CacheUse.open(cache, ON, {}, chat(temperature=0), BODY, "a", PII)
    b = CacheUse.open(cache, ON, {}, chat(temperature=0), BODY, "b", PII)
    assert a is not None and b is not None and a.key != b.key


def test_fresh_stale_and_the_lru_bound() -> None:
    now = [1000.0]
    cache = ResponseCache(2, clock=lambda: now[0])
    cache.put("a", [b'{"x":1}'], 110)
    cache.put("b", [b'{"x":2}'], 110)
    assert asyncio.run(cache.get("a", 10)) == [{"x": 1}]
    cache.put("c", [b'{"x":3}'], 110)  # "b" was used least recently
    assert asyncio.run(cache.get("b", 10)) is None
    assert len(cache) == 2
    now[0] += 50
    assert asyncio.run(cache.get("a", 10)) is None
    assert asyncio.run(cache.get("a", 110)) == [{"x": 1}]


def test_memory_is_bounded_in_bytes_too() -> None:
    cache = ResponseCache(100, max_bytes=200)
    for key in "abcdef":
        cache.put(key, [b'"' + b"x" * 60 + b'"'], 10)
    assert cache.bytes <= 200 and len(cache) < 6
    assert asyncio.run(cache.get("f", 10)) == ["x" * 60]
    assert asyncio.run(cache.get("a", 10)) is None


async def _answer(use: CacheUse, chunks: list[dict[str, Any]]) -> None:
    async for _ in use.watch(use.record(replay(chunks))):
        pass


def chunk(content: str = "", finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}


@pytest.mark.parametrize(
    ("finish", "outcome", "kept"),
    [("stop", "ok", True), ("length", "ok", True), ("tool_calls", "ok", True),
     ("content_filter", "ok", False), (None, "ok", False), ("stop", "client_gone", False)],
)  # fmt: skip
def test_only_whole_answers_are_kept(finish: str | None, outcome: str, kept: bool) -> None:
    cache = ResponseCache(10)
    use = CacheUse(cache, ON, "k")
    asyncio.run(_answer(use, [chunk("hi"), chunk(finish=finish)]))
    record = UsageRecord("r", "m", False, outcome=outcome)
    use.settle(record)
    assert record.cache == "miss"
    assert (asyncio.run(cache.get("k", 10)) is not None) is kept


def test_a_hit_spends_no_upstream_tokens() -> None:
    record = UsageRecord("r", "m", False, prompt_tokens=3, completion_tokens=4)
    assert record.upstream_tokens() == (3, 4)
    record.cache = "hit"
    assert record.upstream_tokens() == (0, 0)
