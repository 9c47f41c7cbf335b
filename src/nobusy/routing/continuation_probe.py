"""Which continuation an upstream honours, found by trying it: for ``auto`` and ``nobusy check``.

The probe asks a short question (temperature 0), cuts the answer in the middle of its words
and sends the first half back with each native continuation (``prefix``, ``vllm``). A mode
*continues* when the answer goes on with the next words of the uncut one; it *restarts*
when the answer begins again from the start (the field was ignored); it is *rejected* when
the upstream refuses the request. Upstreams that cannot be probed fall back to the
instruction (``none``), which nobusy never announces as seamless.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nobusy.errors import UpstreamError
from nobusy.routing.continuation import Method, continuation_body
from nobusy.upstreams.base import UpstreamCall

if TYPE_CHECKING:
    from nobusy.upstreams.base import Upstream, UpstreamSettings

__all__ = [
    "PROBE_QUESTION",
    "ContinuationModes",
    "Verdict",
    "best_method",
    "check_continuations",
    "probe_continuation",
]

log = logging.getLogger("nobusy.continuation")

PROBE_QUESTION = "Count from one to twelve in English words, separated by single spaces."
NATIVE_MODES = ("prefix", "vllm")
_PROBE_TOKENS = 40
_PROBE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one continuation mode did on the probe: continues, restarts, differs or rejected."""

    outcome: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.outcome} ({self.detail})" if self.detail else self.outcome


async def _answer(upstream: Upstream, model: str | None, body: dict[str, Any]) -> str:
    parts: list[str] = []
    async with asyncio.timeout(_PROBE_TIMEOUT):
        async for chunk in upstream.stream(UpstreamCall(model=model, body=body)):
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if isinstance(text, str):
                    parts.append(text)
    return "".join(parts)


def judge(full: str, cut: int, continuation: str) -> Verdict:
    """Whether ``continuation`` goes on from word ``cut`` of ``full`` or starts over."""
    words, said = full.split(), continuation.split()
    expected = words[cut : cut + 2]
    if said[: len(expected)] == expected:
        return Verdict("continues")
    if said[:2] == words[:2]:
        return Verdict("restarts")
    return Verdict("differs", " ".join(said[:4]))


async def probe_continuation(upstream: Upstream, model: str | None) -> dict[str, Verdict]:
    """Each native continuation mode's verdict on ``upstream``; raises UpstreamError if the
    upstream cannot answer the plain question."""
    base: dict[str, Any] = {
        "messages": [{"role": "user", "content": PROBE_QUESTION}],
        "temperature": 0,
        "seed": 1,
        "max_tokens": _PROBE_TOKENS,
    }
    full = await _answer(upstream, model, base)
    words = full.split()
    if len(words) < 4:
        raise UpstreamError(f"probe answer too short to cut: {full!r}", upstream=upstream.name)
    cut = len(words) // 2
    # The partial answer as a client would hold it: up to the end of word `cut`.
    end = 0
    for word in words[:cut]:
        end = full.index(word, end) + len(word)
    partial = full[:end]
    verdicts: dict[str, Verdict] = {}
    for mode in NATIVE_MODES:
        body = continuation_body(base, partial, mode, cut)
        try:
            verdicts[mode] = judge(full, cut, await _answer(upstream, model, body))
        except UpstreamError as exc:
            verdicts[mode] = Verdict("rejected", exc.message)
    return verdicts


def best_method(verdicts: dict[str, Verdict]) -> Method:
    """The first native mode that continued, else the instruction."""
    for mode in NATIVE_MODES:
        verdict = verdicts.get(mode)
        if verdict is not None and verdict.outcome == "continues":
            return Method(mode, verified=True)
    return Method("none")


class ContinuationModes:
    """The continuation each upstream uses; ``auto`` is settled by one probe, on first need."""

    def __init__(self) -> None:
        self._known: dict[str, Method] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def forget(self, name: str) -> None:
        """``name`` was redefined (a reload): probe its continuation again on first need."""
        self._known.pop(name, None)

    async def method(
        self, upstream: Upstream, settings: UpstreamSettings, model: str | None
    ) -> Method:
        native = settings.native_continuation
        if native is not None:
            return Method("prefix", verified=True, label=native)
        method = await self._method(upstream, settings, model)
        label = settings.continuation_label
        if label and method.mode in NATIVE_MODES:
            return dataclasses.replace(method, label=label)
        return method

    async def _method(
        self, upstream: Upstream, settings: UpstreamSettings, model: str | None
    ) -> Method:
        if settings.continuation != "auto":
            return Method(settings.continuation)
        name = upstream.name
        known = self._known.get(name)
        if known is not None:
            return known
        async with self._locks.setdefault(name, asyncio.Lock()):
            known = self._known.get(name)
            if known is not None:
                return known
            try:
                verdicts = await probe_continuation(upstream, model)
            except (UpstreamError, TimeoutError) as exc:
                # Not remembered: the next continuation probes again.
                log.warning("continuation probe of %s failed (%s); asking in words", name, exc)
                return Method("none")
            method = self._known[name] = best_method(verdicts)
            found = ", ".join(f"{mode}: {v}" for mode, v in verdicts.items())
            log.info("continuation on %s: %s (%s)", name, method.mode, found)
            return method


async def check_continuations(
    upstreams: dict[str, Upstream], settings: dict[str, UpstreamSettings], skip: set[str]
) -> dict[str, str]:
    """For ``nobusy check``: per upstream, what each continuation did and which one is used."""
    names = [name for name in upstreams if name not in skip]
    found = await asyncio.gather(*(_check_one(upstreams[name], settings[name]) for name in names))
    return dict(zip(names, found, strict=True))


async def _check_one(upstream: Upstream, spec: UpstreamSettings) -> str:
    if spec.native_continuation is not None:
        return f"{spec.native_continuation} (always)"
    try:
        verdicts = await probe_continuation(upstream, upstream.default_model)
    except (UpstreamError, TimeoutError) as exc:
        return f"not probed: {exc}; uses {spec.continuation}"
    found = ", ".join(f"{mode} {verdict}" for mode, verdict in verdicts.items())
    best = best_method(verdicts).mode
    if spec.continuation == "auto":
        return f"{found}; auto uses {best}"
    configured = verdicts.get(spec.continuation)
    if spec.continuation != "none" and (configured is None or configured.outcome != "continues"):
        return f"{found}; configured {spec.continuation} did not continue: set {best}"
    return f"{found}; uses {spec.continuation}"
