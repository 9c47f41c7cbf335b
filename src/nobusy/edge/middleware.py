"""The outermost layer of every request: its id, its response headers, and its body's limits.

A pure ASGI middleware (no BaseHTTPMiddleware task per request). Before any handler runs it
settles the client's address, applies the edge policy (``nobusy.edge.policy``: Origin, Host, body
type) and checks the API key. The body cap counts bytes as they arrive, so a chunked body
without Content-Length is cut off too; a client that pauses longer than ``body_timeout``
mid-body, or takes longer than ``body_deadline`` in all, is cut off as well.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os

from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nobusy.edge.auth import SESSION_COOKIE, Authenticator
from nobusy.edge.policy import EdgePolicy, is_json
from nobusy.errors import (
    HostNotAllowed,
    NobusyError,
    OriginNotAllowed,
    RequestTimeout,
    RequestTooLarge,
    UnsupportedMediaType,
)
from nobusy.responses import error_response, internal_error
from nobusy.settings import Settings

__all__ = ["RequestContextMiddleware"]

log = logging.getLogger("nobusy")
# Under /v1/nobusy/ (the admin mount's prefix) but for API keys: features clients call.
API_KEY_PATHS = frozenset({"/v1/nobusy/crosscheck"})

_FORWARDING = (b"x-forwarded-for", b"forwarded", b"x-real-ip")
_WITH_BODY = ("POST", "PUT", "PATCH")
# The knowledge base's paths, where the admin key also passes (it sees every store and file).
_KNOWLEDGE = ("/v1/files", "/v1/vector_stores")
_UPLOAD = "/v1/files"  # multipart uploads, up to knowledge.max_upload_bytes


class RequestContextMiddleware:
    """Give each request an id, stamp ``x-request-id``/``x-nobusy-upstream``, guard the body."""

    def __init__(
        self, app: ASGIApp, settings: Settings, authenticator: Authenticator | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = settings.max_body_bytes
        self.body_timeout = settings.body_timeout
        self.body_deadline = settings.body_deadline
        self.admin_key_set = settings.admin_key is not None
        self.admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
        self.max_upload_bytes = max(settings.max_body_bytes, settings.knowledge.max_upload_bytes)
        self.policy = EdgePolicy.from_settings(settings)
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

        headers = _headers(scope)
        self._settle_client(scope, headers, state)
        path: str = scope["path"]
        try:
            # API keys are checked here, before the body is read: a request without a valid
            # key costs a header parse and a hash, never a 10 MiB upload.
            self._check_origin(headers)
            if (
                self.authenticator is not None
                and path.startswith("/v1/")
                and (not path.startswith("/v1/nobusy/") or path in API_KEY_PATHS)
            ):
                client = scope["client"][0] if scope.get("client") else "unknown"
                if self._knowledge_admin(path, headers, scope["method"]):
                    state["admin"] = True
                else:
                    state["key"] = self.authenticator.check(_authorization(headers), client)
            self._check_host(path, headers, state)
            self._check_body_type(scope["method"], path, headers)
        except NobusyError as exc:
            await error_response(exc, path)(scope, receive, send_with_headers)
            return

        limit = self.max_upload_bytes if path == _UPLOAD else self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not (value.isascii() and value.isdigit()) or int(value) > limit:
                    too_large = RequestTooLarge(
                        f"The request body is larger than the limit of {limit} bytes."
                    )
                    await error_response(too_large, path)(scope, receive, send_with_headers)
                    return
                break

        received = 0
        body_done = False
        timeout = self.body_timeout
        deadline = asyncio.get_running_loop().time() + self.body_deadline

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                # The body is complete: later receives wait for the client to leave,
                # which may rightly take as long as the answer streams.
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(0.0, min(timeout, left))):
                    message = await receive()
            except TimeoutError:
                if left <= timeout:  # a body trickled byte by byte never pauses for long
                    raise RequestTimeout(
                        f"The request body did not arrive in full within "
                        f"{self.body_deadline:g} seconds."
                    ) from None
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
        except ClientDisconnect:
            # Not a fault of ours and nobody to answer: one quiet line, no traceback.
            log.info("request %s: the client left before sending its whole body", request_id)
        except Exception as exc:
            # Rendered here rather than by Starlette's outermost ServerErrorMiddleware so that
            # even a 500 carries x-request-id. After the headers, only the log can be told.
            if started:
                raise
            await internal_error(request_id, exc, path)(scope, receive, send_with_headers)

    def _settle_client(
        self, scope: Scope, headers: dict[bytes, str], state: dict[str, object]
    ) -> None:
        """The client's address behind trusted proxies; note forwarding by untrusted ones."""
        client = scope.get("client")
        if not client:
            return
        peer = client[0]
        if self.policy.trusts(peer):
            address = self.policy.client_address(peer, headers.get(b"x-forwarded-for"))
            if address != peer:
                scope["client"] = (address, 0)
        elif any(name in headers for name in _FORWARDING):
            state["proxied"] = True

    def _check_origin(self, headers: dict[bytes, str]) -> None:
        origin = headers.get(b"origin")
        if origin is not None and not self.policy.origin_allowed(origin, headers.get(b"host")):
            raise OriginNotAllowed(
                f"Requests from pages of {origin} are not allowed; add the origin to "
                "allowed_origins if it should be."
            )

    def _check_host(self, path: str, headers: dict[bytes, str], state: dict[str, object]) -> None:
        # A valid API key, or the admin key the handler will demand, protects the request
        # already: a rebinding page has neither. Everything else must name this server.
        if state.get("key") is not None or (self.admin_key_set and path.startswith("/v1/nobusy/")):
            return
        if state.get("admin"):
            return
        host = headers.get(b"host")
        if not self.policy.host_allowed(host):
            raise HostNotAllowed(
                f"This server does not answer to the host name {host!r}; add it to "
                "allowed_hosts if it should."
            )

    def _knowledge_admin(self, path: str, headers: dict[bytes, str], method: str) -> bool:
        """Whether a knowledge-base request carries the admin key (not an API key), or the
        console's sign-in cookie in its place."""
        if self.admin_key is None or not path.startswith(_KNOWLEDGE):
            return False
        given = _bearer(headers)
        if not given and self.authenticator is not None:
            cookie = cookie_parser(headers.get(b"cookie", "")).get(SESSION_COOKIE)
            return self.authenticator.signed_in(cookie, method, headers.get(b"origin"))
        return bool(given) and hmac.compare_digest(given.encode(), self.admin_key.encode())

    @staticmethod
    def _check_body_type(method: str, path: str, headers: dict[bytes, str]) -> None:
        if method not in _WITH_BODY or not path.startswith("/v1/"):
            return
        content_type = headers.get(b"content-type")
        if path == _UPLOAD and (content_type or "").lower().startswith("multipart/form-data"):
            return  # an upload; Origin was checked, so no other site's page can send it
        if content_type is None:
            has_body = headers.get(b"content-length", "0") != "0" or b"transfer-encoding" in headers
            if not has_body:
                return  # POST .../revoke with no body at all
        elif is_json(content_type):
            return
        raise UnsupportedMediaType(
            "Send the request body as JSON with 'Content-Type: application/json' (with curl: "
            "-H 'Content-Type: application/json').",
            param="content-type",
        )


def _bearer(headers: dict[bytes, str]) -> str:
    scheme, _, given = _authorization(headers).partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


def _authorization(headers: dict[bytes, str]) -> str:
    """The bearer credential; Anthropic's SDKs and coding agents send ``x-api-key`` instead."""
    authorization = headers.get(b"authorization")
    if authorization is None and b"x-api-key" in headers:
        return "Bearer " + headers[b"x-api-key"]
    return authorization or ""


def _headers(scope: Scope) -> dict[bytes, str]:
    """The request's headers by name; of a repeated header, the first."""
    out: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        out.setdefault(name, value.decode("latin-1"))
    return out
