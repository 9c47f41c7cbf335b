"""``POST /v1/chat/completions``: parse, route, relay — the request's whole path in one page."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from nobusy.errors import NobusyError, UpstreamEjected
from nobusy.relay import collect, sse_events
from nobusy.responses import EventStreamResponse, JSONResponse
from nobusy.routing import Answer
from nobusy.schema import parse_chat_request
from nobusy.state import app_state
from nobusy.usage import UsageRecord

__all__ = ["chat_completions"]


async def chat_completions(request: Request) -> Response:
    """Answer a chat completion from the first route of the alias that can, streaming or not."""
    started = time.perf_counter()
    state = app_state(request)
    chat, body = parse_chat_request(await request.body())
    state.router.alias(chat.model)  # unknown model: 404 before anything is logged as usage
    request_id: str = request.state.request_id
    record = UsageRecord(request_id=request_id, alias=chat.model, stream=chat.stream)
    in_flight = state.metrics.in_flight.labels(chat.model)
    in_flight.inc()
    first_token_at: float | None = None

    answer: Answer | None = None

    def close() -> None:
        in_flight.dec()
        if answer is not None:
            record.tried = answer.tried()
        state.ledger.close(record, started, first_token_at)

    try:
        answer = await state.router.open(chat.model, body, request_id)
    except NobusyError as exc:
        record.outcome = exc.code or "error"
        failures = getattr(exc, "failures", ())
        record.tried = [f.upstream for f in failures if not isinstance(f, UpstreamEjected)]
        close()
        raise
    first_token_at = answer.first_token_at
    record.upstream = answer.upstream
    request.state.upstream = answer.upstream
    headers = {"x-nobusy-upstream": answer.upstream}
    if chat.stream:
        return EventStreamResponse(sse_events(answer, chat, record, close), headers)
    try:
        completion = await collect(answer, chat, record)
    except NobusyError as exc:
        record.outcome = exc.code or "error"
        raise
    finally:
        close()
    if record.notes:  # a continuation happened: say so where non-streaming clients can see it
        headers["x-nobusy-failover"] = "; ".join(record.notes)
    return JSONResponse(completion, headers=headers)
