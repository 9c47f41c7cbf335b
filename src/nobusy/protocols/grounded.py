"""The knowledge base on a request's path: which stores it searches, the passages put into its
body, and the citations its stream ends with.

A request searches its alias's stores (``knowledge: {stores, top_k}``) and those it asks for
itself: the ``x-nobusy-knowledge`` header, or a protocol's own search tool (the Responses
``file_search``, which ``OpenAIResponses.file_search`` gives). ``ground`` runs once, after
admission and before the guard (``pipeline``), so a failover or continuation reuses the same
passages; ``cited`` ends the stream with ``nobusy.citations`` in the client's protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, runtime_checkable

import orjson

from nobusy.knowledge.grounding import FileSearch, Grounding, is_local, requested, retrieve
from nobusy.routing.relay import DONE, Encoder, OpenAIEvents
from nobusy.schema import ChatRequest
from nobusy.state import AppState
from nobusy.store.ledger import Transcript

__all__ = ["asked_stores", "cited", "ground"]


def asked_stores(header: str | None, protocol: object) -> FileSearch | None:
    """The stores a request asks for itself: its ``x-nobusy-knowledge`` ``header`` and its
    ``protocol``'s own search tool, together (None: neither)."""
    named = requested(header)
    tool: FileSearch | None = getattr(protocol, "file_search", None)
    if tool is None:
        return FileSearch(named) if named else None
    return FileSearch(
        tuple(dict.fromkeys((*tool.stores, *named))),
        tool.top_k,
        tool.filters,
        tool.score_threshold,
    )


async def ground(
    state: AppState,
    exchange: Transcript | None,
    chat: ChatRequest,
    body: dict[str, Any],
    asked: FileSearch | None,
) -> Grounding | None:
    """The passages of the alias's stores and of those the request ``asked`` for, put into
    ``body`` (LocalOnlyStore when a route could take a ``local_only`` store's passages off
    premises); the audit (``exchange``) records which documents they came from."""
    router, kb = state.router, state.knowledge
    alias = router.alias(chat.model)
    attached = alias.knowledge
    if (attached is None and asked is None) or kb is None:
        return None
    own = asked.stores if asked is not None else ()
    stores = tuple(dict.fromkeys((*(attached.stores if attached else ()), *own)))
    top_k = max(attached.top_k if attached else 0, asked.top_k if asked else 0)
    filters = asked.filters if asked is not None else None
    threshold = asked.score_threshold if asked is not None else 0.0
    remote = sorted(
        {
            route.upstream
            for route in (*alias.routes, *alias.overflow)
            if not is_local(router.upstreams[route.upstream])
        }
    )
    grounding = await retrieve(
        kb, stores, top_k, body, remote=remote, filters=filters, score_threshold=threshold
    )
    if grounding is not None:
        grounding.apply(body)
        if exchange is not None:
            exchange.request["nobusy_retrieved"] = grounding.sources()
    return grounding


@runtime_checkable
class _Extensible(Protocol):
    """An encoder that ends its stream with what nobusy adds, given ``extension``."""

    extension: Callable[[], dict[str, Any]] | None


async def cited(
    events: AsyncIterator[bytes], grounding: Grounding | None, encoder: Encoder
) -> AsyncIterator[bytes]:
    """A stream that ends with ``nobusy.citations``, once the whole answer is known: OpenAI's
    chat stream in one more chunk before ``[DONE]``; a protocol whose encoder takes an
    ``extension`` (Anthropic's ``message_delta``, the Responses ``response.completed``) in its
    own final event, where its SDKs keep it as an extra field and other clients skip it."""
    if grounding is None or not isinstance(encoder, OpenAIEvents):
        if grounding is not None and isinstance(encoder, _Extensible):
            encoder.extension = grounding.citations
        async for event in events:
            yield event
        return
    async for event in events:
        if event == DONE:
            # A chunk with no choices, as the usage chunk is: SDKs parse it, clients skip it.
            body = {
                "object": "chat.completion.chunk",
                "choices": [],
                "nobusy": grounding.citations(),
            }
            yield b"data: " + orjson.dumps(body) + b"\n\n"
        yield event
