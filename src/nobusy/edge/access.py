"""One access line per request, written when the request has ended however it ended.

The outermost middleware: it sees the status actually sent, and reads what the inner layers
left in the request's state: its id, the API key, and for a chat completion its usage record
(alias, upstream, time to first token, tokens, outcome). uvicorn's own access log is off.
Probes and the console's polling are logged at DEBUG, so INFO shows the traffic.

It also shortens a failed start-up: Starlette hands uvicorn the whole traceback of an
exception raised while the app starts (an embedded model that cannot load, a database that
cannot open), and uvicorn logs it as is; the operator gets its last line instead, and the
traceback only at DEBUG.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog"]

log = logging.getLogger("nobusy.access")

_QUIET = ("/healthz", "/readyz", "/metrics", "/static/", "/v1/nobusy/status", "/favicon")


class AccessLog:
    """Log ``request <id> <method> <path> status=... key=... alias=... ...`` per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, _short_startup_errors(send))
            return
        if scope["type"] != "http" or not log.isEnabledFor(
            logging.DEBUG if _quiet(scope) else logging.INFO
        ):
            # Nothing would be logged (say, at --log-level warning): no wrapper on every
            # message of the response, which for a stream is every chunk.
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            level = logging.DEBUG if _quiet(scope) else logging.INFO
            log.log(level, "%s", line(scope, status, time.perf_counter() - started))


def _quiet(scope: Scope) -> bool:
    path: str = scope["path"]
    return path.startswith(_QUIET)


def line(scope: Scope, status: int, seconds: float) -> str:
    """The access line's text: ``key=value`` pairs, the ones that apply."""
    state: dict[str, Any] = scope.get("state") or {}
    parts = [
        f"request {state.get('request_id', '-')}",
        f"{scope.get('method', '-')} {scope['path']}",
        f"status={status or 'none'}",
    ]
    key = state.get("key")
    if key is not None:
        parts.append(f"key={key.name}")
    record = state.get("usage_record")
    if record is not None:
        parts.append(f"alias={record.alias}")
        parts.append(f"upstream={record.upstream or 'none'}")
        if len(record.tried) > 1:
            parts.append(f"tried={','.join(record.tried)}")
        if record.ttft_ms is not None:
            parts.append(f"ttft={record.ttft_ms:.0f}ms")
        parts.append(f"tokens={record.prompt_tokens}+{record.completion_tokens}")
        if record.queue_ms:
            parts.append(f"queued={record.queue_ms:.0f}ms")
        if record.cache is not None:
            parts.append(f"cache={record.cache}")
        parts.append(f"outcome={record.outcome}")
    elif status >= 400:
        parts.append("outcome=refused" if status < 500 else "outcome=error")
    parts.append(f"time={seconds * 1000:.0f}ms")
    return " ".join(parts)


def _short_startup_errors(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "lifespan.startup.failed" and message.get("message"):
            text = str(message["message"]).strip()
            log.debug("start-up failed:\n%s", text)
            last = text.splitlines()[-1]
            message = {**message, "message": f"nobusy cannot start: {last}"}
        await send(message)

    return sending
