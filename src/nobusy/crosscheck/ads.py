"""``x-nobusy-check: ads`` (or an alias's ``check_ads``): the single-answer ad detector on a
chat answer, without asking anyone else. Non-streaming answers get a ``nobusy.ads`` field and
an ``x-nobusy-ads`` header; streams end with an SSE comment ``: nobusy-ads {...}`` (before
``data: [DONE]``), which SDKs ignore and clients that ask can read. Nothing runs when off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from nobusy.crosscheck.detector import AnswerReport, check_answer
from nobusy.schema import ChatRequest

__all__ = ["AdsCheck", "wanted"]

HEADER = "x-nobusy-check"
_DONE = b"data: [DONE]\n\n"


def wanted(header: str | None, alias_setting: bool) -> bool:
    """Whether the ad check runs: the request's header names ``ads``, or the alias says so."""
    if header is not None and "ads" in {p.strip().lower() for p in header.split(",")}:
        return True
    return alias_setting


def _question(chat: ChatRequest) -> str:
    for message in reversed(chat.messages):
        if message.role == "user":
            content = message.content
            if isinstance(content, str):
                return content
            return "".join(str(p.get("text", "")) for p in content or [] if p.get("type") == "text")
    return ""


class AdsCheck:
    """The answer's text collected as it passes, and the detector's report at its end."""

    def __init__(self, chat: ChatRequest) -> None:
        self.question = _question(chat)
        self.parts: list[str] = []

    def report(self, text: str | None = None) -> AnswerReport:
        answer = text if text is not None else "".join(self.parts)
        return check_answer(answer, self.question)

    async def watch(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """``chunks`` unchanged, their content remembered."""
        async for chunk in chunks:
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str) and choice.get("index", 0) == 0:
                    self.parts.append(content)
            yield chunk

    async def around(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The SSE events with the report as a comment before ``[DONE]`` (or at the end)."""
        sent = False
        async for part in events:
            if not sent and part.endswith(_DONE):
                yield part[: -len(_DONE)] + self._comment() + _DONE
                sent = True
            else:
                yield part
        if not sent:
            yield self._comment()

    def _comment(self) -> bytes:
        return b": nobusy-ads " + orjson.dumps(self.report().as_dict()) + b"\n\n"

    def annotate(self, body: dict[str, Any], text: str, headers: dict[str, str]) -> None:
        """A whole answer: its report in ``body["nobusy"]["ads"]`` and a summary header."""
        report = self.report(text)
        body.setdefault("nobusy", {})["ads"] = report.as_dict()
        headers["x-nobusy-ads"] = (
            f"{report.verdict}; score={report.score:.3f}; flags={len(report.flags)}"
        )
