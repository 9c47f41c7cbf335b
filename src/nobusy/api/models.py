"""``GET /v1/models``: the aliases clients may ask for, in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.responses import JSONResponse
from nobusy.settings import ModelAlias
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
            **_knowledge(spec),
        }
        for alias, spec in state.router.models.items()
    ]
    return JSONResponse({"object": "list", "data": data})


def _knowledge(spec: ModelAlias) -> dict[str, Any]:
    # The stores an alias grounds its answers in, so the console can show who uses a store.
    if spec.knowledge is None:
        return {}
    attached = {"stores": list(spec.knowledge.stores), "top_k": spec.knowledge.top_k}
    return {"nobusy": {"knowledge": attached}}


routes: list[BaseRoute] = [Route("/v1/models", list_models, methods=["GET"])]
