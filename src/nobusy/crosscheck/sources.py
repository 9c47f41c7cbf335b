"""A cross-check's sources: the parsed request, each source's slot, and asking one source
(or the judge) through the normal routing as one upstream call against the caller's key."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request

from nobusy.crosscheck.detector import AnswerReport
from nobusy.errors import NobusyError
from nobusy.protocols.pipeline import complete
from nobusy.schema import ChatRequest

__all__ = ["Check", "SourceResult", "ask", "text_of"]


@dataclass
class Check:
    """A parsed cross-check: the question, the sources by name, the optional judge."""

    id: str
    messages: list[dict[str, Any]]
    question: str
    models: list[str]
    judge: str | None
    language: str
    stream: bool
    max_tokens: int


@dataclass
class SourceResult:
    """One source's slot: its answer, or how it failed."""

    model: str
    label: str
    answer: str | None = None
    upstream: str | None = None
    latency_ms: float = 0.0
    usage: dict[str, int] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    report: AnswerReport | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "label": self.label,
            "status": "ok" if self.error is None else "failed",
            "upstream": self.upstream,
            "latency_ms": round(self.latency_ms, 1),
            "usage": self.usage,
            "answer": self.answer,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.report is not None:
            out.update(self.report.as_dict(with_sentences=True))
        return out


def text_of(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, str):
        return content
    parts = content or []
    return "".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")


async def ask(
    request: Request,
    check: Check,
    model: str,
    label: str,
    note: str,
    messages: list[dict[str, Any]],
) -> SourceResult:
    """One source's answer (or its failure) through the normal routing."""
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": check.max_tokens}
    chat = msgspec.convert(body, ChatRequest)
    result = SourceResult(model, label)
    started = time.perf_counter()
    try:
        completion, record = await complete(
            request,
            chat,
            body,
            len(msgspec.json.encode(body)),
            request_id=f"{request.state.request_id}-{label}",
            note=note,
        )
    except NobusyError as exc:
        result.error = exc.body()["error"]
        result.latency_ms = (time.perf_counter() - started) * 1000
        return result
    result.latency_ms = (time.perf_counter() - started) * 1000
    result.answer = text_of(completion["choices"][0]["message"].get("content"))
    result.upstream = record.upstream
    result.usage = dict(completion.get("usage") or {})
    return result
