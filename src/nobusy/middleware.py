"""The outermost layer of every request: its id, its response headers, and its body's limits.

A pure ASGI middleware (no BaseHTTPMiddleware task per request). The body cap counts bytes as
they arrive, so a chunked body without Content-Length is cut off too; a client that pauses
longer than ``body_timeout`` mid-body is cut off as well.
"""

from __future__ import annotations

import asyncio
import os

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nobusy.auth import Authenticator
from nobusy.errors import NobusyError, RequestTimeout, RequestTooLarge
from nobusy.responses import error_response, internal_error

__all__ = ["RequestContextMiddleware"]


class RequestContextMiddleware:
    """Give each request an id, stamp ``x-request-id``/``x-nobusy-upstream``, guard the body."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        body_timeout: float,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = os.urandom(12).hex()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers.append("x-request-id", request_id)
                if "x-nobusy-upstream" not in headers:
                    headers.append("x-nobusy-upstream", state.get("upstream", "none"))
            await send(message)

        # API keys are checked here, before the body is read: a request without a valid key
        # costs a header parse and a hash, never a 10 MiB upload.
        path: str = scope["path"]
        if (
            self.authenticator is not None
            and path.startswith("/v1/")
            and not path.startswith("/v1/nobusy/")
        ):
            authorization = ""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            client = scope["client"][0] if scope.get("client") else "unknown"
            try:
                state["key"] = self.authenticator.check(authorization, client)
            except NobusyError as exc:
                await error_response(exc)(scope, receive, send_with_headers)
                return

        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    too_large = RequestTooLarge(
                        f"The request body is larger than the limit of {limit} bytes."
                    )
                    await error_response(too_large)(scope, receive, send_with_headers)
                    return
                break

        received = 0
        body_done = False
        timeout = self.body_timeout

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                # The body is complete: later receives wait for the client to leave,
                # which may rightly take as long as the answer streams.
                return await receive()
            try:
                async with asyncio.timeout(timeout):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"The request body did not arrive within {timeout:g} seconds."
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(
                        f"The request body is larger than the limit of {limit} bytes."
                    )
                body_done = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, guarded_receive, send_with_headers)
        except Exception as exc:
            # Rendered here rather than by Starlette's outermost ServerErrorMiddleware so that
            # even a 500 carries x-request-id. After the headers, only the log can be told.
            if started:
                raise
            await internal_error(request_id, exc)(scope, receive, send_with_headers)
