"""OpenAI chat completions: the internal request and chunks are already this protocol's."""

from __future__ import annotations

from typing import Any

from nobusy.routing.relay import Encoder, OpenAIEvents
from nobusy.schema import ChatRequest
from nobusy.store.usage import UsageRecord

__all__ = ["OPENAI_CHAT", "OpenAIChat"]


class OpenAIChat:
    """The ``ClientProtocol`` of ``/v1/chat/completions``: chunks and completions as they are."""

    def encoder(self, chat: ChatRequest, record: UsageRecord) -> Encoder:
        return OpenAIEvents()

    def render(self, completion: dict[str, Any], chat: ChatRequest) -> dict[str, Any]:
        return completion


OPENAI_CHAT = OpenAIChat()
