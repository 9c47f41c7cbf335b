"""``POST /v1/responses``: OpenAI's Responses API, answered through the shared pipeline
(``nobusy.protocols.pipeline``) from any upstream kind, failed over and continued like chat.

nobusy keeps no responses yet: ``GET`` and ``DELETE /v1/responses/{id}`` answer 404, as does
a request naming a ``previous_response_id``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.errors import NotFound
from nobusy.protocols.openai_responses import OPENAI_RESPONSES, parse_responses_request
from nobusy.protocols.pipeline import handle

__all__ = ["create_response", "routes", "stored_response"]


async def create_response(request: Request) -> Response:
    """Create a response: the answer of the alias's first route that can, streaming or not."""
    return await handle(request, OPENAI_RESPONSES, parse_responses_request)


async def stored_response(request: Request) -> Response:
    """A stored response: none is kept, so 404 naming the id."""
    raise NotFound(
        f"Response '{request.path_params['response_id']}' not found: nobusy does not keep "
        "responses.",
        param="response_id",
    )


routes: list[BaseRoute] = [
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", stored_response, methods=["GET", "DELETE"]),
]
