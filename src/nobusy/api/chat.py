"""``POST /v1/chat/completions``: OpenAI chat completions, parsed and answered through the
shared pipeline (``nobusy.protocols.pipeline``)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.protocols.openai_chat import OPENAI_CHAT
from nobusy.protocols.pipeline import handle
from nobusy.schema import ChatRequest, parse_chat_request

__all__ = ["chat_completions", "routes"]


async def chat_completions(request: Request) -> Response:
    """Answer a chat completion from the first route of the alias that can, streaming or not."""
    return await handle(request, OPENAI_CHAT, _parse)


def _parse(raw: bytes) -> tuple[ChatRequest, dict[str, Any]]:
    # Looked up at each call, so a test can replace this module's parse_chat_request.
    return parse_chat_request(raw)


routes: list[BaseRoute] = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
