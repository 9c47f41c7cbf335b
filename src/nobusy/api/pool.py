"""``/v1/nobusy/pool``: the local inference servers, and draining one for maintenance."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.responses import JSONResponse
from nobusy.routing.pool import drain, pool_rows, tier_rows
from nobusy.state import app_state

__all__ = ["drain_server", "list_pool", "routes", "undrain_server"]


async def list_pool(request: Request) -> Response:
    """Each server-aware upstream: model, running/waiting, KV use, cache hits, utilisation;
    and each tier: utilisation, answers, the share spilled there and what it cost; ``spill``:
    whether an alias spills by ``spill_after``."""
    router = app_state(request).router
    spill = any(spec.spill_after is not None for spec in router.models.values())
    return JSONResponse(
        {"object": "list", "data": pool_rows(router), "tiers": tier_rows(router), "spill": spill}
    )


async def drain_server(request: Request) -> Response:
    """Send no new request to an upstream; the streams it is answering finish."""
    name = request.path_params["name"]
    drain(app_state(request).router, name, True)
    return JSONResponse({"drained": name})


async def undrain_server(request: Request) -> Response:
    """Send new requests to a drained upstream again."""
    name = request.path_params["name"]
    drain(app_state(request).router, name, False)
    return JSONResponse({"undrained": name})


# Relative to the admin mount.
routes: list[BaseRoute] = [
    Route("/pool", list_pool, methods=["GET"]),
    Route("/pool/{name}/drain", drain_server, methods=["POST"]),
    Route("/pool/{name}/undrain", undrain_server, methods=["POST"]),
]
