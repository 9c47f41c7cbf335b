"""``kind: anthropic`` — Anthropic's Messages API, or a provider's Anthropic-compatible endpoint.

DeepSeek, Kimi (Moonshot), Zhipu GLM and Alibaba Qwen publish Messages API endpoints for
coding agents; this kind calls them, and Anthropic itself, as the ``openai`` kind calls
OpenAI-compatible ones: over aiohttp's connection pool, always streaming (so time to first
token, keep-alive ``ping``s and truncation look the same on every path), with the event
stream parsed by httpx-sse. ``upstreams.anthropic_wire`` translates the request and the
events; this module speaks HTTP and turns every failure into ``nobusy.errors``: an error
status (429 and 529 with ``Retry-After`` are busy), an ``error`` event inside the 200
stream, a stream cut before ``message_stop``. A cut answer continues here by prefill: the
partial answer is sent as a trailing assistant turn, which the Messages API continues.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import aiohttp
import orjson
from httpx_sse import EventSource
from pydantic import AnyHttpUrl, Field, PositiveInt, SecretStr

from nobusy.errors import (
    UpstreamError,
    UpstreamProtocolError,
)
from nobusy.upstreams.anthropic_wire import (
    EventReader,
    error_from_body,
    message_chunks,
    messages_body,
    stream_error,
)
from nobusy.upstreams.base import Chunk, Probe, UpstreamCall, UpstreamSettings, status_error
from nobusy.upstreams.http import (
    SSEBody,
    new_session,
    parse_retry_after,
    probe_models,
    safety_timeout,
    translate_errors,
)

__all__ = ["DEFAULT_MAX_TOKENS", "Settings", "Upstream"]

# Anthropic requires max_tokens. 8192 fits every listed provider's output limit (DeepSeek's
# and Kimi's chat models stop there) while leaving room for long answers; a client that
# wants more or less says so.
DEFAULT_MAX_TOKENS = 8192
_MAX_ERROR_BODY = 16 * 1024


class Settings(UpstreamSettings):
    """An Anthropic Messages API endpoint."""

    kind: Literal["anthropic"] = Field(
        "anthropic", description="Anthropic's Messages API or a compatible endpoint."
    )
    continuation: Literal["auto", "prefix", "vllm", "none"] = Field(
        "auto",
        description=(
            "How this upstream continues a partial answer after a failover: `prefix` (or "
            "`vllm`, the same here) sends it as a trailing assistant turn, which the Messages "
            "API continues (prefill); `none` asks in words; `auto` probes prefill once, on "
            "first need."
        ),
    )
    base_url: AnyHttpUrl = Field(
        description=(
            "The endpoint's base URL, as its ANTHROPIC_BASE_URL (https://api.anthropic.com, "
            "https://api.deepseek.com/anthropic, ...); nobusy posts to /v1/messages under it."
        )
    )
    api_key: SecretStr | None = Field(
        None, description="Sent as x-api-key; use ${ENV_VAR} in YAML."
    )
    anthropic_version: str = Field(
        "2023-06-01", description="The anthropic-version header sent with every request."
    )
    default_model: str | None = Field(
        None, description="Model used by a route that names only the upstream."
    )
    max_tokens: PositiveInt = Field(
        DEFAULT_MAX_TOKENS,
        description="max_tokens sent when the client sets none (the Messages API requires it).",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra HTTP headers sent with every request."
    )
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to establish a connection.")
    max_connections: int = Field(256, gt=0, description="Connection pool size to this upstream.")

    continuation_label: ClassVar[str | None] = "assistant prefill"

    def has_default_model(self) -> bool:
        return self.default_model is not None


class Upstream:
    """Streams Messages API answers as chat chunks over a pooled connection."""

    kind: ClassVar[str] = "anthropic"

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self.default_model = settings.default_model or ""
        base = str(settings.base_url).rstrip("/")
        self._messages_url = base + "/v1/messages"
        self._models_url = base + "/v1/models"
        self._headers = {
            "accept": "text/event-stream",
            "anthropic-version": settings.anthropic_version,
            **settings.headers,
        }
        if settings.api_key is not None and settings.api_key.get_secret_value():
            self._headers["x-api-key"] = settings.api_key.get_secret_value()
        self._timeout = safety_timeout(
            settings.connect_timeout, settings.first_token_timeout, settings.idle_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = new_session(self.settings.max_connections, self._headers, self._timeout)
        return self._session

    async def start(self) -> None:
        """Nothing to warm up: the connection pool is made on first use (``_client``)."""

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        model = call.model or self.default_model
        body = messages_body(call.body, model, self.settings.max_tokens, self.name)
        headers = {"content-type": "application/json"}
        if call.request_id:
            headers["x-request-id"] = call.request_id
        with self._translate_errors():
            async with self._client().post(
                self._messages_url, data=orjson.dumps(body), headers=headers
            ) as response:
                if response.status != 200:
                    raise await self._status_error(response)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    for whole in await self._whole_message(response):
                        yield whole
                    return
                reader = EventReader(self.name)
                async for event in EventSource(SSEBody.of(response)).aiter_sse():
                    # Read on after message_stop rather than return: a response left unread
                    # cannot go back to the pool.
                    if not event.data or reader.stopped:
                        continue
                    chunk = reader.read(event.event, event.data)
                    if chunk is not None:
                        yield chunk
                if not reader.finished:
                    raise UpstreamProtocolError(
                        "upstream stream ended before message_stop", upstream=self.name
                    )
                if not reader.stopped:  # finished, but message_stop never came
                    usage = reader.usage_chunk()
                    if usage is not None:
                        yield usage

    async def _whole_message(self, response: aiohttp.ClientResponse) -> list[Chunk]:
        # A 200 with JSON to a streaming request: an error object, or a server that ignored
        # `stream` and sent the whole message, which is as good.
        raw = await response.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(
                "upstream sent a truncated body", upstream=self.name
            ) from None
        if isinstance(body, dict) and body.get("type") == "error":
            raise self._error(body, 200, response.headers)
        return message_chunks(body, self.name)

    async def _status_error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        buf = bytearray()
        async for part in response.content.iter_any():
            buf += part
            if len(buf) >= _MAX_ERROR_BODY:
                break
        raw = bytes(buf[:_MAX_ERROR_BODY])
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {"error": {"message": raw.decode("utf-8", "replace")[:300]}}
        return self._error(body, response.status, response.headers)

    def _error(self, body: Any, status: int, headers: Mapping[str, str]) -> UpstreamError:
        if status == 200:  # overloaded_error counts as busy here too
            return stream_error(body, self.name)
        message = error_from_body(body)[1]
        retry_after = parse_retry_after(headers.get("retry-after"))
        return status_error(status, message, self.name, retry_after)

    def _translate_errors(self) -> AbstractContextManager[None]:
        return translate_errors(self.name, self.settings.connect_timeout, self._timeout.sock_read)

    async def probe(self) -> Probe:
        """GET /v1/models (Anthropic has it); a compatible endpoint without it (404) still
        answered HTTP with our key, which is all a probe can learn there."""
        return await probe_models(
            self._client(),
            self._models_url,
            self._translate_errors(),
            self._status_error,
            missing_ok=True,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


if TYPE_CHECKING:
    from nobusy.upstreams.base import Upstream as UpstreamProtocol

    def _is_an_upstream(upstream: Upstream) -> UpstreamProtocol:
        return upstream  # mypy proves this kind has every member of the protocol
