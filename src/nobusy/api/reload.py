"""``POST /v1/nobusy/reload``: apply the config file and the managed overlay as they are now."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.errors import ConfigError, InvalidRequest
from nobusy.reload import Reloader, tell_workers
from nobusy.responses import JSONResponse
from nobusy.state import app_state

__all__ = ["reloader", "routes"]


def reloader(request: Request) -> Reloader:
    state = app_state(request)
    assert state.reloader is not None  # set by the lifespan
    return state.reloader


async def reload_config(request: Request) -> Response:
    """Reload as SIGHUP does; a config that does not load is a 400 with ``nobusy check``'s
    message, and the running one stays. With ``--workers N`` every worker reloads."""
    try:
        outcome = await reloader(request).reload()
    except ConfigError as exc:
        raise InvalidRequest(f"config error: {exc.message}", code="invalid_config") from None
    tell_workers(app_state(request).settings)
    return JSONResponse(outcome.as_dict())


# Relative to the admin mount.
routes: list[BaseRoute] = [Route("/reload", reload_config, methods=["POST"])]
