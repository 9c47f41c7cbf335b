"""A fake local inference server (vLLM, SGLang or llama.cpp's server) in front of the fake upstream.

It plays what makes routing among local servers matter: a fixed number of running slots and a
waiting queue behind them; a prefix cache (LRU over the hashes of block-aligned prompt
prefixes) where prefill time grows with the part of the prompt not cached; and the server's own
Prometheus ``/metrics`` under its real metric names (llama.cpp also ``/slots``). Answers and
fault modes are the fake upstream's (``testing.fake_upstream``), which this app wraps.

Tokens are approximated as characters / 4, and a cache block is 64 characters (about vLLM's
16-token block): nobusy's placement hashes prompts the same way, but only the shape matters,
since a real server's tokenizer is not nobusy's. Metric names are those of vLLM ≥ 0.10.2
(``kv_cache_usage_perc``, ``prefix_cache_*``), SGLang ≥ 0.4 and llama.cpp's server of 2025.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BLOCK_CHARS", "SERVERS", "FakeServer", "PrefixCache", "prompt_blocks"]

SERVERS = ("vllm", "sglang", "llamacpp")
BLOCK_CHARS = 64  # ≈ 16 tokens of 4 characters: vLLM's default block
_CHARS_PER_TOKEN = 4
_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})


def prompt_blocks(messages: Iterable[Any], block: int = BLOCK_CHARS) -> list[int]:
    """Chained hashes of the prompt's whole blocks (each hash covers the prefix up to it)."""
    text = "".join(
        f"{m.get('role')}\x00{m.get('content')}\x00" for m in messages if isinstance(m, dict)
    )
    hashes: list[int] = []
    h = 0
    for start in range(0, len(text) - block + 1, block):
        h = hash((h, text[start : start + block]))
        hashes.append(h)
    return hashes


class PrefixCache:
    """LRU over block hashes: how many leading blocks of a prompt are cached."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def lookup(self, hashes: list[int]) -> int:
        hit = 0
        for h in hashes:
            if h not in self.blocks:
                break
            hit += 1
        return hit

    def insert(self, hashes: list[int]) -> None:
        blocks = self.blocks
        for h in hashes:
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)

    def usage(self) -> float:
        return len(self.blocks) / self.capacity if self.capacity else 0.0


class FakeServer:
    """Slots, a waiting queue and a prefix cache in front of ``inner`` (the fake upstream)."""

    def __init__(
        self,
        inner: ASGIApp,
        server: str,
        model: str,
        slots: int = 4,
        prefill_per_token: float = 0.0002,
        cache_blocks: int = 2048,
    ) -> None:
        if server not in SERVERS:
            raise ValueError(f"Unknown server {server!r}; known: {', '.join(SERVERS)}")
        self.inner = inner
        self.server = server
        self.model = model
        self.slots = slots
        self.prefill_per_token = prefill_per_token
        self.cache = PrefixCache(cache_blocks)
        self.free = asyncio.Semaphore(slots)
        self.running = 0
        self.waiting = 0
        self._hits = self._queries = 0  # prompt tokens found cached, and asked for
        self.registry = CollectorRegistry()
        self._gauges, self._counters = self._declare()
        for counter in self._counters.values():
            self._metric(counter)  # a labelled counter shows from 0 once its child exists

    def _declare(self) -> tuple[dict[str, Gauge], dict[str, Counter]]:
        """The server's own metric names (the counters' ``_total`` is added by the client)."""
        label = ["model_name"]
        reg = self.registry
        if self.server == "vllm":
            gauges = {
                "running": "vllm:num_requests_running",
                "waiting": "vllm:num_requests_waiting",
                "kv": "vllm:kv_cache_usage_perc",
            }
            counters = {
                "preemptions": "vllm:num_preemptions",
                "queries": "vllm:prefix_cache_queries",
                "hits": "vllm:prefix_cache_hits",
            }
        elif self.server == "sglang":
            gauges = {
                "running": "sglang:num_running_reqs",
                "waiting": "sglang:num_queue_reqs",
                "kv": "sglang:token_usage",
                "hit_rate": "sglang:cache_hit_rate",
            }
            counters = {}
        else:  # llama.cpp's server has no model label
            label = []
            gauges = {
                "running": "llamacpp:requests_processing",
                "waiting": "llamacpp:requests_deferred",
            }
            counters = {"prompt": "llamacpp:prompt_tokens"}
        g = {k: Gauge(n, k, label, registry=reg) for k, n in gauges.items()}
        c = {k: Counter(n, k, label, registry=reg) for k, n in counters.items()}
        return g, c

    def _metric(self, family: Gauge | Counter) -> Any:
        return family.labels(self.model) if self.server != "llamacpp" else family

    def _refresh(self) -> None:
        values = {"running": self.running, "waiting": self.waiting, "kv": self.cache.usage()}
        values["hit_rate"] = self._hits / self._queries if self._queries else 0.0
        for key, gauge in self._gauges.items():
            self._metric(gauge).set(values[key])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/metrics":
            self._refresh()
            return await _send(send, 200, generate_latest(self.registry), b"text/plain")
        if method == "GET" and path == "/slots" and self.server == "llamacpp":
            slots = [
                {"id": i, "is_processing": i < self.running, "n_ctx": 4096}
                for i in range(self.slots)
            ]
            return await _send(send, 200, orjson.dumps(slots), b"application/json")
        if method != "POST" or path not in _CHAT_PATHS:
            return await self.inner(scope, receive, send)
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = bytearray()
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError:
            request = None
        messages = request.get("messages") if isinstance(request, dict) else None
        hashes = prompt_blocks(messages if isinstance(messages, list) else [])
        self.waiting += 1
        try:
            await self.free.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            hit = self.cache.lookup(hashes)
            self._note_cache(len(hashes), hit)
            self.cache.insert(hashes)
            uncached_tokens = (len(hashes) - hit) * BLOCK_CHARS // _CHARS_PER_TOKEN
            prefill = uncached_tokens * self.prefill_per_token
            if prefill > 0:
                await asyncio.sleep(prefill)  # the slot is held while the prompt is computed
            await self.inner(scope, _replay(bytes(raw), receive), send)
        finally:
            self.running -= 1
            self.free.release()

    def _note_cache(self, blocks: int, hit: int) -> None:
        tokens = blocks * BLOCK_CHARS // _CHARS_PER_TOKEN
        hit_tokens = hit * BLOCK_CHARS // _CHARS_PER_TOKEN
        self._queries += tokens
        self._hits += hit_tokens
        if "queries" in self._counters:
            self._metric(self._counters["queries"]).inc(tokens)
            self._metric(self._counters["hits"]).inc(hit_tokens)
        if "prompt" in self._counters:
            self._metric(self._counters["prompt"]).inc(tokens - hit_tokens)

    def stats(self) -> dict[str, Any]:
        """For tests: the hit rate so far, and the queue now."""
        rate = self._hits / self._queries if self._queries else 0.0
        return {"running": self.running, "waiting": self.waiting, "hit_rate": rate}


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read, then the client's own messages (its
    disconnect), so the inner app still sees a client leave."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send(send: Send, status: int, body: bytes, ctype: bytes) -> None:
    headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
