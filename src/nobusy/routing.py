"""From a model alias to an answer that has started: try its routes in order until one speaks.

An attempt counts as started at its first token (content, reasoning or a tool call), not at its
HTTP headers or a role-only chunk, so an upstream that fails or stalls before saying anything
is replaced without the client noticing. Each attempt's time to first token counts from that
attempt's start, and keep-alive comments never count as progress.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from nobusy.errors import AllUpstreamsFailed, ModelNotFound, UpstreamError, UpstreamTimeout
from nobusy.metrics import Metrics
from nobusy.settings import ModelAlias, Route
from nobusy.upstreams.base import Chunk, Upstream, UpstreamCall

__all__ = ["Answer", "Router", "has_token"]

_UNUSABLE_FOR = 30.0


def has_token(chunk: Chunk) -> bool:
    """True when a chunk carries something the client sees, or ends the answer."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            return True
        if choice.get("finish_reason"):
            return True
    return False


@dataclass(slots=True)
class Answer:
    """An answer whose first token has arrived: where it comes from, and all its chunks."""

    route: Route
    chunks: AsyncIterator[Chunk]
    first_token_at: float
    failures: list[UpstreamError] = field(default_factory=list)

    @property
    def upstream(self) -> str:
        return str(self.route)


class Router:
    """Holds the upstreams and the alias table; opens answers with failover before first token."""

    def __init__(
        self, models: Mapping[str, ModelAlias], upstreams: Mapping[str, Upstream], metrics: Metrics
    ) -> None:
        self.models = dict(models)
        self.upstreams = dict(upstreams)
        self.metrics = metrics
        # Foundation-level health: an upstream whose last attempt failed within the last
        # 30 s is not counted as usable by /readyz. Circuit breaking replaces this.
        self._last_failure: dict[str, float] = {}

    def usable(self, upstream: str) -> bool:
        failed = self._last_failure.get(upstream)
        return failed is None or time.monotonic() - failed > _UNUSABLE_FOR

    def _note(self, upstream: str, outcome: str) -> None:
        self.metrics.attempt(upstream, outcome)
        if outcome == "ok":
            self._last_failure.pop(upstream, None)
        else:
            self._last_failure[upstream] = time.monotonic()

    def aliases(self) -> list[str]:
        return list(self.models)

    def routes(self, alias: str) -> tuple[Route, ...]:
        spec = self.models.get(alias)
        if spec is None:
            available = ", ".join(self.models) or "(none)"
            raise ModelNotFound(
                f"The model '{alias}' does not exist. Available models: {available}.",
                param="model",
            )
        return spec.routes

    async def open(self, alias: str, body: dict[str, Any], request_id: str) -> Answer:
        """Start the first route that produces a token; raise AllUpstreamsFailed if none does."""
        failures: list[UpstreamError] = []
        for route in self.routes(alias):
            upstream = self.upstreams[route.upstream]
            call = UpstreamCall(model=route.model, body=body, request_id=request_id)
            iterator = aiter(upstream.stream(call))
            # Each attempt gets its own budget from its own start; keep-alive comments and
            # role-only chunks never extend it.
            deadline = time.perf_counter() + _first_token_timeout(upstream)
            try:
                prefix = await _until_first_token(iterator, deadline, route.upstream)
            except UpstreamError as exc:
                await _close(iterator)
                self._note(route.upstream, exc.code or "upstream_error")
                if not exc.retryable:
                    raise
                failures.append(exc)
                continue
            except BaseException:
                await _close(iterator)
                raise
            self._note(route.upstream, "ok")
            return Answer(route, _chain(prefix, iterator), time.perf_counter(), failures)
        raise AllUpstreamsFailed(alias, failures)

    async def aclose(self) -> None:
        await asyncio.gather(*(u.aclose() for u in self.upstreams.values()))


def _first_token_timeout(upstream: Upstream) -> float:
    settings = getattr(upstream, "settings", None)
    return float(getattr(settings, "first_token_timeout", 30.0))


async def _until_first_token(
    iterator: AsyncIterator[Chunk], deadline: float, name: str
) -> list[Chunk]:
    prefix: list[Chunk] = []
    try:
        async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
            async for chunk in iterator:
                prefix.append(chunk)
                if has_token(chunk):
                    break
    except TimeoutError:
        raise UpstreamTimeout("no first token within first_token_timeout", upstream=name) from None
    return prefix


async def _chain(prefix: list[Chunk], rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    try:
        for chunk in prefix:
            yield chunk
        async for chunk in rest:
            yield chunk
    finally:
        await _close(rest)


async def _close(iterator: AsyncIterator[Chunk]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
