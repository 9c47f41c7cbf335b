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

import orjson
from starlette.requests import Request
from starlette.responses import Response

from nobusy.admission.capacity import Ticket
from nobusy.errors import InvalidRequest, NobusyError, UpstreamEjected
from nobusy.relay import collect, sse_events
from nobusy.responses import EventStreamResponse, JSONResponse
from nobusy.routing import Answer, Reservation
from nobusy.schema import ChatRequest, parse_chat_request
from nobusy.state import AppState, app_state
from nobusy.usage import UsageRecord

__all__ = ["chat_completions"]


class _Books:
    """One request's usage record and in-flight gauge, closed exactly once."""

    def __init__(self, state: AppState, chat: ChatRequest, request_id: str) -> None:
        self.state = state
        self.started = time.perf_counter()
        self.record = UsageRecord(request_id=request_id, alias=chat.model, stream=chat.stream)
        self.in_flight = state.metrics.in_flight.labels(chat.model)
        self.in_flight.inc()
        self.answer: Answer | None = None
        self.closed = False

    def failed(self, exc: NobusyError) -> None:
        self.record.outcome = exc.code or "error"
        failures = getattr(exc, "failures", ())
        self.record.tried = [f.upstream for f in failures if not isinstance(f, UpstreamEjected)]
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.in_flight.dec()
        first_token_at = None
        if self.answer is not None:
            self.record.tried = self.answer.tried()
            first_token_at = self.answer.first_token_at
        self.state.ledger.close(self.record, self.started, first_token_at)


async def chat_completions(request: Request) -> Response:
    """Answer a chat completion from the first route of the alias that can, streaming or not."""
    state = app_state(request)
    chat, body = parse_chat_request(await request.body())
    router = state.router
    router.alias(chat.model)  # unknown model: 404 before anything is logged as usage
    books = _Books(state, chat, request.state.request_id)
    try:
        reservation = router.reserve(chat.model)
        if reservation is None:
            patience = _patience(request, state.settings.default_max_wait)
            client = request.client.host if request.client else "unknown"
            ticket = router.enqueue(chat.model, f"client:{client}", "normal", patience)
            if chat.stream:
                events = _queued_stream(ticket, chat, body, books)
                return EventStreamResponse(events, {"x-nobusy-upstream": "queued"})
            upstream = await ticket.wait()
            books.record.queue_ms = round(ticket.waited * 1000, 3)
            reservation = router.reservation_for(chat.model, upstream)
        answer = await _open(books, chat, body, reservation)
    except NobusyError as exc:
        books.failed(exc)
        raise
    headers = {"x-nobusy-upstream": answer.upstream}
    request.state.upstream = answer.upstream
    if chat.stream:
        return EventStreamResponse(sse_events(answer, chat, books.record, books.close), headers)
    try:
        completion = await collect(answer, chat, books.record)
    except NobusyError as exc:
        books.record.outcome = exc.code or "error"
        raise
    finally:
        books.close()
    if books.record.notes:  # a continuation happened: say so where non-streaming clients see
        headers["x-nobusy-failover"] = "; ".join(books.record.notes)
    return JSONResponse(completion, headers=headers)


async def _open(
    books: _Books, chat: ChatRequest, body: dict[str, object], reservation: Reservation
) -> Answer:
    answer = await books.state.router.open(chat.model, body, books.record.request_id, reservation)
    books.answer = answer
    books.record.upstream = answer.upstream
    books.record.overflow = answer.overflow
    return answer


async def _queued_stream(
    ticket: Ticket, chat: ChatRequest, body: dict[str, object], books: _Books
) -> AsyncIterator[bytes]:
    """Queue positions as SSE comments (ignored by OpenAI SDKs), then the answer itself."""
    try:
        try:
            async for position, eta in ticket.updates():
                yield f": nobusy: queued, position {position}, about {eta:.0f}s\n\n".encode()
            books.record.queue_ms = round(ticket.waited * 1000, 3)
            reservation = books.state.router.reservation_for(chat.model, ticket.upstream)
            answer = await _open(books, chat, body, reservation)
        except NobusyError as exc:
            books.record.outcome = exc.code or "error"
            yield b"data: " + orjson.dumps(exc.body()) + b"\n\n"
            return
        yield f": nobusy: answering from {answer.upstream}\n\n".encode()
        async for part in sse_events(answer, chat, books.record, books.close):
            yield part
    finally:
        books.close()


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
