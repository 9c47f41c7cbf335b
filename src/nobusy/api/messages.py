"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API, answered
through the shared pipeline (``nobusy.protocols.pipeline``) from any upstream kind.

Coding agents send ``?beta=true`` and ``anthropic-version``/``anthropic-beta`` headers: the
query and the headers are accepted and need nothing from nobusy. The key may come as
``x-api-key`` or as a bearer token (``nobusy.edge.middleware``); errors leave in Anthropic's
shape (``nobusy.protocols.errors``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.errors import ModelNotAllowed
from nobusy.keys import Key
from nobusy.protocols.anthropic_messages import (
    ANTHROPIC_MESSAGES,
    count_tokens,
    parse_messages_request,
)
from nobusy.protocols.pipeline import handle
from nobusy.responses import JSONResponse
from nobusy.state import app_state

__all__ = ["messages", "messages_count_tokens", "routes"]


async def messages(request: Request) -> Response:
    """Create a message: the answer of the alias's first route that can, streaming or not."""
    return await handle(request, ANTHROPIC_MESSAGES, parse_messages_request)


async def messages_count_tokens(request: Request) -> Response:
    """Estimate the input tokens of a Messages body, as admission estimates them."""
    state = app_state(request)
    raw = await request.body()
    model, tokens = await state.offload.run(len(raw), count_tokens, raw)
    state.router.alias(model)  # unknown model: 404
    key: Key | None = getattr(request.state, "key", None)
    if key is not None and not key.allows_model(model):
        raise ModelNotAllowed(f"Key '{key.name}' may not use model '{model}'.", param="model")
    return JSONResponse({"input_tokens": tokens})


routes: list[BaseRoute] = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", messages_count_tokens, methods=["POST"]),
]
