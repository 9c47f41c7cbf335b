"""``/v1/responses``: OpenAI's Responses API, answered through the shared pipeline
(``nobusy.protocols.pipeline``) from any upstream kind, failed over and continued like chat.

Answers are kept for ``responses_ttl`` (``store.responses``) unless a request says
``store: false``, for ``previous_response_id`` and ``GET``/``DELETE /v1/responses/{id}``;
each key sees only its own.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.errors import NotFound
from nobusy.keys import Key
from nobusy.protocols.openai_responses import OpenAIResponses
from nobusy.protocols.pipeline import handle
from nobusy.responses import JSONResponse
from nobusy.state import app_state

__all__ = ["create_response", "delete_response", "get_response", "routes"]


def _key_id(request: Request) -> str | None:
    key: Key | None = getattr(request.state, "key", None)
    return key.id if key is not None else None


async def create_response(request: Request) -> Response:
    """Create a response: the answer of the alias's first route that can, streaming or not."""
    protocol = OpenAIResponses(app_state(request).responses, _key_id(request))
    return await handle(request, protocol, protocol.parse)


def _missing(response_id: str) -> NotFound:
    return NotFound(
        f"Response with id '{response_id}' not found (it may have expired, or belong to "
        "another key).",
        param="response_id",
    )


async def get_response(request: Request) -> Response:
    """A kept response, as it was sent."""
    response_id = request.path_params["response_id"]
    store = app_state(request).responses
    found = store.response(response_id, _key_id(request)) if store is not None else None
    if found is None:
        raise _missing(response_id)
    return JSONResponse(found)


async def delete_response(request: Request) -> Response:
    """Forget a kept response (its conversation goes with it)."""
    response_id = request.path_params["response_id"]
    store = app_state(request).responses
    if store is None or not store.delete(response_id, _key_id(request)):
        raise _missing(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


routes: list[BaseRoute] = [
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
]
