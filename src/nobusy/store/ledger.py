"""Closing a request's books: its usage record, metrics, key charges and audit rows.

``Ledger.close`` runs once per request, in the handler's ``finally``; the stores it writes to
are a ``UsageSink``, a ``KeyLookup`` (the quota charges) and an ``AuditSink``.
``CommittedAnswers`` holds a response's last byte until its usage row is committed: an answer a
client received is then never missing from the log, even after a SIGKILL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nobusy.errors import NobusyError
from nobusy.guard import Hit
from nobusy.message import MessageBuilder
from nobusy.metrics import Metrics
from nobusy.store.interfaces import AuditSink, KeyLookup, UsageSink
from nobusy.store.usage import UsageRecord

__all__ = ["USAGE_LOG", "CommittedAnswers", "Ledger", "Transcript"]

USAGE_LOG = "usage_log"  # its name in the lifespan state, where CommittedAnswers finds it


@dataclass(slots=True)
class Transcript:
    """What the audit log keeps of one request: the request, the answer as the client received
    it (content, reasoning and tool calls), the filter's hits."""

    request: dict[str, Any]
    answer: MessageBuilder = field(default_factory=MessageBuilder)
    hits: list[Hit] = field(default_factory=list)


class CommittedAnswers:
    """ASGI middleware: a response's last byte leaves once its usage row is committed.

    Inside ``RequestContextMiddleware`` (it reads the request id). The row is recorded before
    the last byte (``Ledger.close`` runs in the handler's ``finally``), so a client that got a
    whole answer knows it is on disk; the wait is the writer's next commit, about a millisecond.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state") or {}
        usage_log: UsageSink | None = state.get(USAGE_LOG)
        request_id: str | None = state.get("request_id")
        if scope["type"] != "http" or usage_log is None or request_id is None:
            await self.app(scope, receive, send)
            return

        async def send_committed(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await usage_log.committed(request_id)
            await send(message)

        await self.app(scope, receive, send_committed)


class Ledger:
    """Closes a request's books: usage record, metrics, and (if enabled) the audit log."""

    def __init__(
        self,
        log: UsageSink,
        metrics: Metrics,
        audit: AuditSink | None = None,
        keys: KeyLookup | None = None,
        price: Callable[[UsageRecord], None] | None = None,
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.audit = audit
        self.keys = keys
        self.price = price  # fills a record's cost (nobusy.money.spend.Pricer.price)
        self._spend: dict[str, int] = {}  # micro-units of the reporting currency, per key
        # Quota charges are summed per key and written at most every half second: one SQLite
        # write per request would be the slowest step of the whole path.
        self._charges: dict[str, int] = {}
        self._last_flush = time.monotonic()

    def close(
        self,
        record: UsageRecord,
        started: float,
        first_token_at: float | None,
        transcript: Transcript | None = None,
    ) -> None:
        now = time.perf_counter()
        record.duration_ms = round((now - started) * 1000, 3)
        upstream = record.upstream or "none"
        ttft = None
        if first_token_at is not None:
            ttft = first_token_at - started
            record.ttft_ms = round(ttft * 1000, 3)
        prompt, completion = record.upstream_tokens()
        self.metrics.answered(
            record.alias, upstream, record.outcome, now - started, ttft, prompt, completion
        )
        if self.price is not None:
            self.price(record)
        self.log.record(record)
        if record.key_id is not None and self.keys is not None:
            tokens = prompt + completion
            self._charges[record.key_id] = self._charges.get(record.key_id, 0) + tokens
            # A request that held money against a budget is charged by settling its hold
            # (nobusy.store.money_holds), in the same transaction that releases it.
            cost = 0 if record.held else record.report_cost_micros
            if cost:
                self._spend[record.key_id] = self._spend.get(record.key_id, 0) + cost
            # Without holds a key with a money budget is charged at once (the next request
            # sees it); quota tokens are summed and written at most every half second.
            if (record.budgeted and cost) or time.monotonic() - self._last_flush > 0.5:
                self.flush_charges()
        if self.audit is not None and transcript is not None:
            self._audit(record, transcript)

    def flush_charges(self) -> None:
        """Take the summed tokens off each key's balance."""
        self._last_flush = time.monotonic()
        charges, self._charges = self._charges, {}
        spend, self._spend = self._spend, {}
        if self.keys is None:
            return
        for key_id, tokens in charges.items():
            cost = spend.pop(key_id, 0)
            try:
                self.keys.charge(key_id, tokens, cost)
            except NobusyError:  # a locked database: keep the charge for the next flush
                self._charges[key_id] = self._charges.get(key_id, 0) + tokens
                self._spend[key_id] = self._spend.get(key_id, 0) + cost

    def _audit(self, record: UsageRecord, transcript: Transcript) -> None:
        audit = self.audit
        assert audit is not None
        common = {"alias": record.alias, "upstream": record.upstream, "key_id": record.key_id}
        audit.append("request", record.request_id, transcript.request, **common)
        for hit in transcript.hits:
            audit.append(
                hit.action,
                record.request_id,
                {
                    "word": hit.word,
                    "matched": hit.matched,
                    "lexicon": hit.lexicon,
                    "category": hit.category,
                    "start": hit.start,
                    "end": hit.end,
                },
                **common,
            )
        audit.append(
            "response",
            record.request_id,
            {
                **_answer(transcript.answer.message()),
                "outcome": record.outcome,
                "tried": record.tried,
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
            },
            **common,
        )


def _answer(message: dict[str, Any]) -> dict[str, Any]:
    """The audited answer: its text (never null), and reasoning and tool calls when there."""
    out: dict[str, Any] = {
        key: message[key] for key in ("reasoning_content", "tool_calls") if key in message
    }
    return {"content": message["content"] or "", **out}
