"""The web console: a chat, a comparison view, a live status board and key management.

Served by nobusy itself at ``/`` with its assets under ``/static``, so it works offline; the
pages talk to the same public and admin APIs as any other client (``routes()`` is what
``create_app`` mounts at the top; the status board's own endpoint, ``status.routes``, goes in
the admin mount).
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route

from nobusy.web.console import index, static_files

__all__ = ["routes"]


def routes() -> list[BaseRoute]:
    """The console's routes: the page and its assets."""
    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Mount("/static", app=static_files(), name="static"),
    ]
