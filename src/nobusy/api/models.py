"""``GET /v1/models``: the aliases clients may ask for, in OpenAI's list shape."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.responses import JSONResponse
from nobusy.state import app_state

__all__ = ["list_models", "routes"]


async def list_models(request: Request) -> Response:
    """List the configured model aliases and the routes behind each."""
    state = app_state(request)
    created = int(state.metrics.started)
    data = [
        {
            "id": alias,
            "object": "model",
            "created": created,
            "owned_by": "nobusy",
            "routes": [str(r) for r in spec.routes],
        }
        for alias, spec in state.router.models.items()
    ]
    return JSONResponse({"object": "list", "data": data})


routes: list[BaseRoute] = [Route("/v1/models", list_models, methods=["GET"])]
