"""Placement among local inference servers: the one with the lowest expected time to first token.

For a request, each server-aware route of a tier (``upstreams.servers``) is scored by what
delays its first token there: the queue ahead of it (the server's running and waiting requests
against its slots, from its metrics, corrected by each answer; the learned limit and nobusy's
own in-flight count when the metrics are stale), the prompt it must compute (the blocks of the
prompt that server probably lacks in its prefix cache), and KV-cache pressure (preemptions
ahead). What a server probably has cached is an approximate prefix index per server: the
chained hashes of block-aligned prefixes of the requests recently sent there, an LRU bounded
in memory, as SGLang's router and llm-d keep.

Bounded-load affinity (Mirrokni, Thorup and Zadimoghaddam's consistent hashing with bounded
loads): a server whose load is over (1+ε)× the tier's average is placed after every other,
so a conversation sticks to the server holding its prefix while that server's load allows, and
moves when it does not. Failures stay with the adaptive limit, circuits and failover: placement
only orders the routes the router found usable.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nobusy.settings import Route
from nobusy.upstreams.server_metrics import ServerSignals

__all__ = ["BLOCK_CHARS", "Placement", "PrefixIndex", "ServerView", "prefix_hashes"]

BLOCK_CHARS = 64  # ≈ 16 tokens: vLLM's default block; tokenizers differ, so only approximate
_MAX_BLOCKS = 512  # a prompt's first 32 k characters say enough about where it is cached
_KV_PRESSURE = 0.9  # past this KV use, a server starts preempting
_MASK = (1 << 64) - 1  # chained hashes stay machine-sized


def prefix_hashes(messages: Any, block: int = BLOCK_CHARS) -> list[int]:
    """Chained hashes of the whole blocks of a chat prompt: hash i covers blocks 0..i."""
    if not isinstance(messages, list):
        return []
    text = "".join(
        f"{m.get('role')}\x00{m.get('content')}\x00" for m in messages if isinstance(m, dict)
    )
    end = min(len(text), block * _MAX_BLOCKS) - block + 1
    hashes = [hash(text[start : start + block]) for start in range(0, max(end, 0), block)]
    h = 0
    for i, piece in enumerate(hashes):  # chained: block i's hash stands for blocks 0..i
        h = hashes[i] = ((h * 1_000_003) ^ piece) & _MASK
    return hashes


class PrefixIndex:
    """The block hashes recently sent to one server, an LRU of at most ``capacity``."""

    def __init__(self, capacity: int = 16384) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks the server probably holds (a binary search: a chained hash
        is present only if its prefix was, so presence is monotone, eviction aside)."""
        blocks = self.blocks
        if not hashes or hashes[0] not in blocks:
            return 0  # most servers never saw this prompt: one lookup
        lo, hi = 1, len(hashes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in blocks:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def add(self, hashes: Sequence[int]) -> None:
        blocks = self.blocks
        for h in hashes:
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)


@dataclass(slots=True)
class ServerView:
    """What placement reads of one server: its signals and the learned fallbacks."""

    signals: ServerSignals
    in_flight: Callable[[], int]  # nobusy's own count (routing.stats)
    limit: Callable[[], int]  # the learned concurrency limit (admission.adaptive)


class Placement:
    """Orders server-aware routes by expected time to first token; remembers what went where."""

    def __init__(
        self,
        servers: Mapping[str, ServerView],
        epsilon: float = 0.25,
        index_blocks: int = 16384,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = dict(servers)
        self.epsilon = epsilon
        self.indexes = {name: PrefixIndex(index_blocks) for name in servers}
        self.clock = clock
        self.blocks_ewma = 8.0  # a request's prompt in blocks, for the cost of a queue place
        self.placed = dict.fromkeys(servers, 0)  # requests placed, per server
        self.hit_blocks = dict.fromkeys(servers, 0)  # of their blocks, expected cached
        self.total_blocks = dict.fromkeys(servers, 0)
        self._memo: tuple[Any, list[int]] = (None, [])

    def hashes(self, body: Mapping[str, Any]) -> list[int]:
        memo_body, memo = self._memo
        if memo_body is body:  # planned, then placed: hash the prompt once
            return memo
        messages = body.get("messages")
        prompt = body.get("prompt")  # /v1/completions: one text
        if messages is None and isinstance(prompt, str):
            messages = [{"role": "", "content": prompt}]
        hashes = prefix_hashes(messages)
        self._memo = (body, hashes)
        return hashes

    def order(self, routes: Sequence[Route], body: Mapping[str, Any]) -> list[Route]:
        """``routes`` (already in tier order) with each tier's server-aware run re-ordered."""
        servers = self.servers
        if not any(r.upstream in servers for r in routes):
            return list(routes)
        out: list[Route] = []
        i = 0
        while i < len(routes):
            tier = routes[i].tier
            j = i
            while j < len(routes) and routes[j].tier == tier:
                j += 1
            group = routes[i:j]
            if len(group) > 1 and all(r.upstream in servers for r in group):
                out.extend(self._rank(group, self.hashes(body)))
            else:
                out.extend(group)
            i = j
        return out

    def _rank(self, group: Sequence[Route], hashes: list[int]) -> list[Route]:
        # Inline and on tuples: this runs for every request over every server of the tier.
        now = self.clock()
        servers, indexes, per_queued = self.servers, self.indexes, self.blocks_ewma
        blocks = len(hashes)
        scored: list[tuple[float, float, int, Route]] = []
        total = 0.0
        for i, route in enumerate(group):
            view = servers[route.upstream]
            signals = view.signals
            load = signals.load(now)
            if load is None:  # metrics stale or refused: nobusy's own count, the learned limit
                load = float(view.in_flight())
                slots = view.limit()
            else:
                slots = signals.slots or view.limit()
            cached = indexes[route.upstream].match(hashes) if blocks else 0
            # Expected TTFT in blocks of prefill: the requests queued ahead of this one (each
            # about one average prompt) and its own uncached blocks.
            queued = load + 1 - max(slots, 1)
            ttft = blocks - cached + 1 + (queued * per_queued if queued > 0 else 0.0)
            reading = signals.reading
            kv = reading.kv_usage if reading is not None else None
            if kv is not None and kv > _KV_PRESSURE:  # preemptions ahead: as many queue places
                ttft += (kv - _KV_PRESSURE) * 10 * per_queued
            if route.weight != 1.0:
                ttft /= max(route.weight, 1e-6)
            scored.append((load, ttft, i, route))
            total += load
        bound = (1 + self.epsilon) * total / len(scored) + 1  # +1: one request is no hot spot
        # Over the bound: after every server within it, whatever its cache holds.
        scored.sort(key=lambda s: (s[0] > bound, s[1], s[2]))
        return [s[3] for s in scored]

    def placed_on(self, upstream: str, body: Mapping[str, Any]) -> None:
        """The request goes to ``upstream``: remember its prefix there."""
        index = self.indexes.get(upstream)
        if index is None:
            return
        hashes = self.hashes(body)
        self.placed[upstream] += 1
        self.total_blocks[upstream] += len(hashes)
        self.hit_blocks[upstream] += index.match(hashes)
        self.blocks_ewma += 0.05 * (len(hashes) - self.blocks_ewma)
        index.add(hashes)

    def cache_hit_estimate(self, upstream: str) -> float | None:
        """The share of prompt blocks sent to ``upstream`` that it probably had cached."""
        total = self.total_blocks.get(upstream, 0)
        return self.hit_blocks[upstream] / total if total else None
