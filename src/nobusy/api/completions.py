"""``POST /v1/completions``: OpenAI's legacy completions (fill-in-the-middle with ``suffix``),
answered through the shared pipeline (``nobusy.protocols.pipeline``) by the routes that serve
text completions (``completions: true``; ``fim: true`` for a suffix)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.protocols.openai_completions import OpenAICompletions
from nobusy.protocols.pipeline import handle

__all__ = ["completions", "routes"]


async def completions(request: Request) -> Response:
    """Complete a prompt (or fill in the middle) from the first route of the alias that can."""
    protocol = OpenAICompletions()
    return await handle(request, protocol, protocol.parse)


routes: list[BaseRoute] = [Route("/v1/completions", completions, methods=["POST"])]
