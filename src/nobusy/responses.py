"""Responses nobusy sends, and the one place an exception becomes an error response.

Every error leaves as ``{"error": {"message", "type", "param", "code"}}`` with the class's
HTTP status, or in the shape of the client protocol its path serves
(``nobusy.protocols.errors``); nothing else about an exception, least of all a traceback,
reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from nobusy.errors import NobusyError, error_body
from nobusy.protocols.errors import error_for

__all__ = [
    "EventStreamResponse",
    "JSONResponse",
    "error_response",
    "http_exception_handler",
    "internal_error",
    "nobusy_error_handler",
]

log = logging.getLogger("nobusy")


class JSONResponse(Response):
    """JSON encoded with orjson (several times faster than the standard library)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class EventStreamResponse(Response):
    """An SSE body that stops the moment the client leaves, and always closes its iterator.

    Starlette's StreamingResponse notices a departed client only at its next write, and leaves
    the iterator for the garbage collector; an upstream request must end at once instead.
    """

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        # Like StreamingResponse: no `body` attribute, so no Content-Length is set.
        self.status_code = 200
        self.background = None
        self.body_iterator = body
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not pump.done():
                pump.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            # Headers were sent, so no error response is possible; the server log gets it.
            log.error("stream failed after headers", exc_info=pump.exception())

    async def _pump(self, send: Send) -> None:
        try:
            async for part in self.body_iterator:
                await send({"type": "http.response.body", "body": part, "more_body": True})
        except OSError:
            return  # the client went away during a write
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def error_response(exc: NobusyError, path: str = "") -> Response:
    """``exc`` as the protocol served at ``path`` shapes errors."""
    status, body = error_for(path, exc.status_code, exc.body())
    return JSONResponse(body, status, exc.headers or None)


async def nobusy_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NobusyError)
    if exc.public_message != exc.message:  # the client got the summary; the log gets the rest
        request_id = getattr(request.state, "request_id", "-")
        log.warning("request %s: %s", request_id, exc.message)
    return error_response(exc, request.url.path)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = {
        404: f"No such endpoint: {request.method} {request.url.path}.",
        405: f"Method {request.method} is not allowed on {request.url.path}.",
    }.get(exc.status_code, str(exc.detail))
    status, body = error_for(
        request.url.path,
        exc.status_code,
        error_body(message, "invalid_request_error", None, code),
    )
    return JSONResponse(body, status, dict(exc.headers or {}) or None)


def internal_error_body(request_id: str, exc: BaseException) -> dict[str, Any]:
    """A bug in nobusy: the log gets the traceback, the client an id to quote."""
    log.error("unexpected error in request %s", request_id, exc_info=exc)
    return error_body(
        f"Internal error in nobusy (request {request_id}); it has been logged.",
        "server_error",
        None,
        "internal_error",
    )


def internal_error(request_id: str, exc: BaseException, path: str = "") -> Response:
    """A bug in nobusy before the headers: a 500 in the shape of ``path``'s protocol."""
    status, body = error_for(path, 500, internal_error_body(request_id, exc))
    return JSONResponse(body, status)
