"""``/console/session``: the console's sign-in, the admin key exchanged for a session cookie.

``POST`` with ``{"admin_key": ...}`` checks the key as every admin request does (a wrong one
counts against the client's allowance of failed keys, so guessing is answered 429 after 20
a minute) and sets ``nobusy_session``: a random token (only its hash is stored,
``store.sessions``), HttpOnly, SameSite=Strict, Secure when the page came over https,
expiring after ``console.session_hours``. ``DELETE`` signs out (the session is deleted on the
server, not only forgotten by the browser); ``GET`` says whether the browser is signed in.
Every attempt, failed or not, and every sign-out is an audit event when the audit log is on.
The admin mount and the knowledge paths then take the cookie where they took the key
(``edge.auth.Authenticator.signed_in``); the CLI keeps sending the key itself.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.edge.auth import SESSION_COOKIE
from nobusy.edge.policy import is_json
from nobusy.errors import AdminAuthRequired, InvalidRequest, NobusyError, UnsupportedMediaType
from nobusy.responses import JSONResponse
from nobusy.state import AppState, app_state

__all__ = ["routes"]

log = logging.getLogger("nobusy")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _audit(request: Request, state: AppState, event: str, content: dict[str, Any]) -> None:
    if state.audit is not None:
        request_id = str(request.scope.get("state", {}).get("request_id", ""))
        state.audit.append(event, request_id, {**content, "client": _client(request)})


async def session_state(request: Request) -> Response:
    """Whether this browser is signed in, and whether signing in is needed at all."""
    state = app_state(request)
    needed = state.settings.admin_key is not None
    cookie = request.cookies.get(SESSION_COOKIE)
    signed_in = needed and state.auth.signed_in(cookie, "GET", None)
    return JSONResponse({"signed_in": signed_in, "needed": needed})


async def sign_in(request: Request) -> Response:
    """Exchange the admin key for a session cookie."""
    state = app_state(request)
    if state.settings.admin_key is None:
        raise InvalidRequest(
            "No admin_key is set: the admin pages are open to loopback clients, with no "
            "sign-in; set admin_key to use them from elsewhere."
        )
    if not is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType('Send the admin key as JSON: {"admin_key": "..."}.')
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not JSON.") from None
    key = body.get("admin_key") if isinstance(body, dict) else None
    if not isinstance(key, str) or not key:
        raise InvalidRequest("admin_key: a string is required.", param="admin_key")
    try:
        state.auth.check_admin(
            f"Bearer {key}",
            _client(request),
            state.settings.admin_key,
            proxied=getattr(request.state, "proxied", False),
        )
    except NobusyError as exc:
        # Failed and refused (rate-limited) attempts alike: an operator reading the audit log
        # sees a guessing run, and its address.
        log.warning("console sign-in refused for %s: %s", _client(request), exc.code)
        _audit(request, state, "console_sign_in", {"ok": False, "reason": exc.code})
        if isinstance(exc, AdminAuthRequired):
            raise AdminAuthRequired("That is not the admin key.") from None
        raise
    assert state.sessions is not None
    ttl = state.settings.console.session_hours * 3600
    token = await run_in_threadpool(state.sessions.create, ttl, _client(request))
    _audit(request, state, "console_sign_in", {"ok": True})
    response = JSONResponse({"signed_in": True, "needed": True, "expires_in": int(ttl)})
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(ttl),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def sign_out(request: Request) -> Response:
    """End this browser's session on the server and clear its cookie."""
    state = app_state(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and state.sessions is not None:
        await run_in_threadpool(state.sessions.revoke, cookie)
        _audit(request, state, "console_sign_out", {})
    response = JSONResponse({"signed_in": False, "needed": state.settings.admin_key is not None})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


routes: list[BaseRoute] = [
    Route("/console/session", session_state, methods=["GET"]),
    Route("/console/session", sign_in, methods=["POST"]),
    Route("/console/session", sign_out, methods=["DELETE"]),
]
