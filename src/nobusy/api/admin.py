"""``/v1/nobusy/*``: operators' view of the upstreams, and a way to put one back in rotation.

Every route under ``/v1/nobusy`` (these, the keys' and the status board's) sits in one mount
(``mount``) whose guard checks the admin key once, before the handler runs: ``admin_key``
when one is set; without it, only loopback clients are let in. Wrong admin keys count against
the client's allowance of failed keys, as API keys do.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from nobusy.api.managed import managed_names, upstream_json
from nobusy.edge.auth import SESSION_COOKIE
from nobusy.errors import NotFound
from nobusy.responses import JSONResponse
from nobusy.state import app_state

__all__ = [
    "PREFIX",
    "AdminOnly",
    "list_upstreams",
    "mount",
    "require_admin",
    "reset_upstream",
    "routes",
]

PREFIX = "/v1/nobusy"


def mount(routes: Sequence[BaseRoute]) -> Mount:
    """``routes`` under ``/v1/nobusy``, every one of them for the admin only."""
    return Mount(PREFIX, routes=routes, middleware=[Middleware(AdminOnly, routes=routes)])


class AdminOnly:
    """The admin mount's guard: ``require_admin`` once, before any of its handlers runs.

    Only for a request one of the mount's routes will serve: a path or method it does not
    serve gets its 404 or 405 unchecked, as when each handler made the check itself.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(
            route.matches(scope)[0] is Match.FULL for route in self.routes
        ):
            require_admin(Request(scope))
        await self.app(scope, receive, send)


def require_admin(request: Request) -> None:
    """Raise unless the request carries the admin key (or, with none set, comes from loopback)."""
    state = app_state(request)
    authorization = request.headers.get("authorization", "")
    # The console's sign-in cookie stands for the key (the CLI sends the key itself).
    cookie = request.cookies.get(SESSION_COOKIE)
    if not authorization and state.auth.signed_in(
        cookie, request.method, request.headers.get("origin")
    ):
        return
    state.auth.check_admin(
        authorization,
        request.client.host if request.client else "",
        state.settings.admin_key,
        proxied=getattr(request.state, "proxied", False),
    )


async def list_upstreams(request: Request) -> Response:
    """Each upstream's circuit state, load, time to first token and last error."""
    state = app_state(request)
    router, specs = state.router, state.settings.upstreams
    capacity = router.capacity.snapshot()
    managed = managed_names(state, "upstreams")
    data = [
        {
            **h.snapshot(),
            "concurrency": capacity[h.name],
            # Its definition (secrets masked), as the console's Upstreams page edits it.
            "config": upstream_json(h.name, specs[h.name]),
            "enabled": specs[h.name].enabled,
            "drained": h.name in router.drained,
            "managed": h.name in managed,
        }
        for h in router.stats.values()
        if h.name in specs
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "queue": router.capacity.queue.depth(),
            "managed_file": str(state.settings.managed_file),
        }
    )


async def reset_upstream(request: Request) -> Response:
    """Close an upstream's circuit now (``all`` for every upstream)."""
    router = app_state(request).router
    name = request.path_params["name"]
    if name != "all" and name not in router.stats:
        raise NotFound(f"No upstream named '{name}'.", param="name")
    for stats in router.stats.values():
        if name in ("all", stats.name):
            stats.circuit.reset()
    return JSONResponse({"reset": name})


# Relative to the mount.
routes: list[BaseRoute] = [
    Route("/upstreams", list_upstreams, methods=["GET"]),
    Route("/upstreams/{name}/reset", reset_upstream, methods=["POST"]),
]
