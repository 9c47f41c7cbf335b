"""The console's page and static assets, sent with headers that keep a browser strict.

The CSP allows only this origin's scripts and styles (no inline code at all), so even a
sanitiser bug in rendering a model's markdown could not run script; the page may not be
framed (clickjacking) and sends no Referer to links in answers.
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SECURITY_HEADERS", "STATIC_DIR", "SecurityHeaders", "index", "static_files"]

STATIC_DIR = Path(__file__).parent / "static"

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


async def index(request: Request) -> Response:
    """The console's single page; everything else is loaded from ``/static``."""
    # no-cache: a new nobusy version's page must not be mixed with an old cached one.
    headers = {**SECURITY_HEADERS, "cache-control": "no-cache"}
    return FileResponse(STATIC_DIR / "index.html", headers=headers, media_type="text/html")


class SecurityHeaders:
    """Add ``SECURITY_HEADERS`` to every response of the wrapped ASGI app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                # Assets are revalidated (ETag) rather than cached blindly, for the same reason.
                headers.setdefault("cache-control", "no-cache")
            await send(message)

        await self.app(scope, receive, send_secured)


def static_files() -> ASGIApp:
    """``static/`` (the console's JS, CSS and vendored libraries) with the security headers."""
    return SecurityHeaders(StaticFiles(directory=STATIC_DIR))
