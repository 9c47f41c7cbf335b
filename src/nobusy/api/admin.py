"""``/v1/nobusy/*``: operators' view of the upstreams, and a way to put one back in rotation.

Protected by ``admin_key`` when one is set; without it, only loopback clients are let in.
Wrong admin keys count against the client's allowance of failed keys, as API keys do.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from nobusy.errors import NotFound
from nobusy.responses import JSONResponse
from nobusy.state import app_state

__all__ = ["list_upstreams", "reset_upstream"]


def require_admin(request: Request) -> None:
    """Raise unless the request carries the admin key (or, with none set, comes from loopback)."""
    state = app_state(request)
    state.auth.check_admin(
        request.headers.get("authorization", ""),
        request.client.host if request.client else "",
        state.settings.admin_key,
        proxied=getattr(request.state, "proxied", False),
    )


async def list_upstreams(request: Request) -> Response:
    """Each upstream's circuit state, load, time to first token and last error."""
    require_admin(request)
    router = app_state(request).router
    capacity = router.capacity.snapshot()
    data = [{**h.snapshot(), "concurrency": capacity[h.name]} for h in router.health.values()]
    return JSONResponse({"object": "list", "data": data, "queue": router.capacity.queue.depth()})


async def reset_upstream(request: Request) -> Response:
    """Close an upstream's circuit now (``all`` for every upstream)."""
    require_admin(request)
    router = app_state(request).router
    name = request.path_params["name"]
    if name != "all" and name not in router.health:
        raise NotFound(f"No upstream named '{name}'.", param="name")
    for health in router.health.values():
        if name in ("all", health.name):
            health.circuit.reset()
    return JSONResponse({"reset": name})
