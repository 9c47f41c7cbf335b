"""``POST /v1/chat/completions``: parse, admit, route, relay — the request's whole path.

Admission first takes a slot on a route. When every route is at its limit the request waits
in the fair queue within its patience (``x-nobusy-max-wait``, else the default): a streaming
client is answered at once with SSE comments giving its position and estimated wait, and the
answer follows in the same stream; a wait longer than the patience is refused at once with
429 and ``Retry-After``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from nobusy.admission.capacity import Ticket
from nobusy.admission.limits import estimate_tokens
from nobusy.errors import (
    AllUpstreamsFailed,
    InvalidRequest,
    NobusyError,
    QueueTimeout,
    UpstreamOverloaded,
)
from nobusy.filtering import check_request, filter_answer, restore_answer
from nobusy.guard import Hit
from nobusy.keys import Key
from nobusy.pii import Masker
from nobusy.relay import collect, sse_events
from nobusy.responses import EventStreamResponse, JSONResponse
from nobusy.routing import Answer, Reservation
from nobusy.schema import ChatRequest, parse_chat_request
from nobusy.state import AppState, app_state
from nobusy.usage import Exchange, UsageRecord

__all__ = ["chat_completions"]


class _Books:
    """One request's usage record and in-flight gauge, closed exactly once."""

    def __init__(
        self, state: AppState, chat: ChatRequest, body: dict[str, Any], request_id: str
    ) -> None:
        self.state = state
        # A shallow copy: the audit keeps the messages as sent, before PII masking.
        self.exchange = Exchange(dict(body)) if state.audit is not None else None
        self.hits: list[Hit] = self.exchange.hits if self.exchange is not None else []
        self.started = time.perf_counter()
        self.record = UsageRecord(request_id=request_id, alias=chat.model, stream=chat.stream)
        self.in_flight = state.metrics.in_flight.labels(chat.model)
        self.in_flight.inc()
        self.answer: Answer | None = None
        self.closed = False
        self.key: Key | None = None
        self.who = ""
        self.priority = "normal"
        self.deadline = 0.0
        self.started_at = 0.0
        self.masker: Masker | None = None
        self.estimate = 0

    async def admit(self, key: Key | None, chat: ChatRequest, body_size: int) -> None:
        """Check the key's own limits; from here on the request counts against them."""
        if key is None or self.state.limits is None:
            return
        self.record.key_id = key.id
        estimate = estimate_tokens(body_size, chat.max_completion_tokens or chat.max_tokens)
        await self.state.limits.admit(key, chat.model, estimate)
        self.key, self.estimate = key, estimate

    def failed(self, exc: NobusyError) -> None:
        self.record.outcome = exc.code or "error"
        failures = getattr(exc, "failures", ())
        self.record.tried = [f.upstream for f in failures if f.attempted]
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.in_flight.dec()
        if self.key is not None and self.state.limits is not None:
            actual = self.record.prompt_tokens + self.record.completion_tokens
            self.state.limits.done(self.key.id, self.estimate, actual)
        first_token_at = None
        if self.answer is not None:
            self.record.tried = self.answer.tried()
            first_token_at = self.answer.first_token_at
        self.state.ledger.close(self.record, self.started, first_token_at, self.exchange)

    @property
    def capture(self) -> Exchange | None:
        return self.exchange


async def chat_completions(request: Request) -> Response:
    """Answer a chat completion from the first route of the alias that can, streaming or not."""
    state = app_state(request)
    raw = await request.body()
    chat, body = parse_chat_request(raw)
    router = state.router
    router.alias(chat.model)  # unknown model: 404 before anything is logged as usage
    books = _Books(state, chat, body, request.state.request_id)
    key: Key | None = getattr(request.state, "key", None)
    try:
        await books.admit(key, chat, len(raw))
        guard = state.guard
        if guard is not None and guard.checks_input:
            check_request(guard, body, books.hits)
        pii = router.alias(chat.model).pii
        if pii.enabled:
            books.masker = Masker(pii.kinds)
            body = books.masker.mask_request(body)
        client = request.client.host if request.client else "unknown"
        books.who = f"key:{key.id}" if key else f"client:{client}"
        books.priority = key.priority if key else "normal"
        default = key.max_wait if key and key.max_wait is not None else None
        patience = _patience(request, default or state.settings.default_max_wait)
        books.started_at = time.monotonic()
        books.deadline = books.started_at + patience
        reservation = router.reserve(chat.model, books.who, books.priority)
        if reservation is None:
            ticket = router.enqueue(chat.model, books.who, books.priority, patience)
            if chat.stream:
                events = _queued_stream(ticket, chat, body, books)
                return EventStreamResponse(events, {"x-nobusy-upstream": "queued"})
            upstream = await ticket.wait()
            books.record.queue_ms = round(ticket.waited * 1000, 3)
            reservation = router.reservation_for(chat.model, upstream, books.who)
        answer = await _open(books, chat, body, reservation)
    except NobusyError as exc:
        books.failed(exc)
        raise
    headers = {"x-nobusy-upstream": answer.upstream}
    request.state.upstream = answer.upstream
    if chat.stream:
        events = sse_events(answer, chat, books.record, books.close, books.capture)
        return EventStreamResponse(events, headers)
    try:
        completion = await collect(answer, chat, books.record, books.capture)
    except NobusyError as exc:
        books.record.outcome = exc.code or "error"
        raise
    finally:
        books.close()
    if books.record.notes:  # a continuation happened: say so where non-streaming clients see
        headers["x-nobusy-failover"] = "; ".join(books.record.notes)
    return JSONResponse(completion, headers=headers)


async def _open(
    books: _Books, chat: ChatRequest, body: dict[str, Any], reservation: Reservation
) -> Answer:
    state = books.state
    router = state.router
    while True:
        try:
            answer = await router.open(chat.model, body, books.record.request_id, reservation)
            break
        except AllUpstreamsFailed as exc:
            if not _only_busy(exc):
                raise
            # Every route said "busy" although it had a free slot by our count: its limit
            # was probing above its real capacity. Wait for the next slot, first in line (this
            # request already had its turn), within the patience; with no patience left the
            # honest answer is the queue's 429, not a 503.
            left = books.deadline - time.monotonic()
            if left <= 0:
                raise QueueTimeout(books.deadline - books.started_at, 1) from None
            ticket = router.enqueue(chat.model, books.who, books.priority, left, front=True)
            upstream = await ticket.wait()
            books.record.queue_ms += round(ticket.waited * 1000, 3)
            reservation = router.reservation_for(chat.model, upstream, books.who)
    if books.masker is not None:
        answer.chunks = restore_answer(answer.chunks, books.masker)
    if state.guard is not None and state.guard.checks_output:
        answer.chunks = filter_answer(answer.chunks, state.guard, books.hits)
    books.answer = answer
    books.record.upstream = answer.upstream
    books.record.overflow = answer.overflow
    return answer


async def _queued_stream(
    ticket: Ticket, chat: ChatRequest, body: dict[str, Any], books: _Books
) -> AsyncIterator[bytes]:
    """Queue positions as SSE comments (ignored by OpenAI SDKs), then the answer itself."""
    try:
        try:
            async for position, eta in ticket.updates():
                yield f": nobusy: queued, position {position}, about {eta:.0f}s\n\n".encode()
            books.record.queue_ms = round(ticket.waited * 1000, 3)
            router = books.state.router
            reservation = router.reservation_for(chat.model, ticket.upstream, books.who)
            answer = await _open(books, chat, body, reservation)
        except NobusyError as exc:
            books.record.outcome = exc.code or "error"
            yield b"data: " + orjson.dumps(exc.body()) + b"\n\n"
            return
        yield f": nobusy: answering from {answer.upstream}\n\n".encode()
        async for part in sse_events(answer, chat, books.record, books.close, books.capture):
            yield part
    finally:
        books.close()


def _only_busy(exc: AllUpstreamsFailed) -> bool:
    # A failover the retry budget refused is no reason to fail the client: waiting for the
    # next slot goes through admission, which no upstream's limit lets amplify.
    tried = [f for f in exc.failures if f.attempted]
    return bool(tried) and all(
        isinstance(f, UpstreamOverloaded) and f.retry_after is None for f in tried
    )


def _patience(request: Request, default: float) -> float:
    header = request.headers.get("x-nobusy-max-wait")
    if header is None:
        return default
    try:
        value = float(header)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise InvalidRequest(
            "x-nobusy-max-wait must be a number of seconds from 0 to 3600.",
            param="x-nobusy-max-wait",
        )
    return value
