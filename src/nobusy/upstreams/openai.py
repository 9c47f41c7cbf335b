"""``kind: openai`` — any OpenAI-compatible HTTP API (DeepSeek, Bailian, Ark, vLLM, Ollama, ...).

Requests go out through aiohttp's connection pool, and the event stream is parsed by
httpx-sse. httpx's client cost over a third of nobusy's CPU per request (building requests,
merging headers, cookies) and httpcore's pool more still, so this module speaks aiohttp and
hands httpx-sse only the two things its parser reads: the headers and the body as text
(docs/benchmarks.md has the figures). The upstream is always asked to stream, even for
non-streaming clients, so that time to first token, keep-alive comments and truncation are
seen the same way on every path. aiohttp and httpx-sse errors, HTTP error statuses and error
events inside a 200 stream are translated into ``nobusy.errors`` here and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import aiohttp
import orjson
from httpx_sse import EventSource
from pydantic import AnyHttpUrl, Field, SecretStr

from nobusy.errors import (
    UpstreamError,
    UpstreamProtocolError,
)
from nobusy.upstreams.base import (
    Chunk,
    Probe,
    UpstreamCall,
    UpstreamSettings,
    is_text_completion,
    status_error,
    text_chunk,
)
from nobusy.upstreams.http import (
    SSEBody,
    new_session,
    parse_retry_after,
    probe_models,
    safety_timeout,
    translate_errors,
)

__all__ = ["Settings", "Upstream"]

# Bounded: an upstream's error body is read only to quote its message.
_MAX_ERROR_BODY = 16 * 1024


class Settings(UpstreamSettings):
    """An OpenAI-compatible HTTP API."""

    kind: Literal["openai"] = Field("openai", description="An OpenAI-compatible HTTP API.")
    base_url: AnyHttpUrl = Field(description="API base URL, ending in /v1 or the provider's path.")
    api_key: SecretStr | None = Field(None, description="Bearer token; use ${ENV_VAR} in YAML.")
    default_model: str | None = Field(
        None, description="Model used by a route that names only the upstream."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra HTTP headers sent with every request."
    )
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to establish a connection.")
    max_connections: int = Field(256, gt=0, description="Connection pool size to this upstream.")

    def has_default_model(self) -> bool:
        return self.default_model is not None


class Upstream:
    """Streams chat completions from an OpenAI-compatible server over a pooled connection."""

    kind: ClassVar[str] = "openai"
    # The header that tells the upstream nobusy's request id, for its logs (None: not sent).
    request_id_header: ClassVar[str | None] = "x-request-id"

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self.default_model = settings.default_model or ""
        base = str(settings.base_url).rstrip("/")
        self._chat_url = base + "/chat/completions"
        self._completions_url = base + "/completions"  # text completions and FIM
        self._models_url = base + "/models"
        self._headers = {"accept": "text/event-stream", **settings.headers}
        # An api_key that expanded to nothing (`${KEY:-}` for a local server) means no key: a
        # bare "Bearer " is a malformed header some servers reject outright.
        if settings.api_key is not None and settings.api_key.get_secret_value():
            self._headers["authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
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
        body = dict(call.body)
        body["model"] = call.model or self.default_model
        body["stream"] = True
        # Ask for usage always: billing needs it even when the client did not.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        text = is_text_completion(body)
        url = self._completions_url if text else self._chat_url
        content = orjson.dumps(body)
        headers = {"content-type": "application/json"}
        if call.request_id and self.request_id_header:
            headers[self.request_id_header] = call.request_id
        with self._translate_errors():
            async with self._client().post(url, data=content, headers=headers) as response:
                if response.status != 200:
                    raise await self._status_error(response)
                ctype = response.headers.get("content-type", "")
                if not ctype.startswith("text/event-stream"):
                    raise await self._non_sse_body(response)
                # The event loop is inline (not a helper generator): every chunk of every
                # answer passes here, and each generator layer costs per chunk.
                finished = done = False
                async for event in EventSource(SSEBody.of(response)).aiter_sse():
                    data = event.data
                    if data == "[DONE]":
                        # Read on to the end of the body rather than return: a response left
                        # unread cannot go back to the pool, and every request would pay a new
                        # connection.
                        done = True
                        continue
                    if not data or done:
                        continue
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise UpstreamProtocolError(
                            "upstream sent malformed JSON in its event stream", upstream=self.name
                        ) from None
                    if not isinstance(chunk, dict):
                        raise UpstreamProtocolError(
                            "upstream sent a non-object event", upstream=self.name
                        )
                    if "error" in chunk:
                        raise self._error_from_body(chunk, 200, None)
                    if text:
                        chunk = _from_text_completion(chunk)
                    for choice in chunk.get("choices") or ():
                        if choice.get("finish_reason"):
                            finished = True
                    yield chunk
                if not (finished or done):
                    raise UpstreamProtocolError(
                        "upstream stream ended without a finish reason or [DONE]",
                        upstream=self.name,
                    )

    async def _status_error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        raw = await self._read_bounded(response)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {"error": {"message": raw.decode("utf-8", "replace")[:300]}}
        return self._error_from_body(body, response.status, response.headers)

    async def _non_sse_body(self, response: aiohttp.ClientResponse) -> UpstreamError:
        # A 200 with a JSON body to a streaming request is either an error object or a
        # server that ignored `stream`; neither can be relayed as a stream.
        raw = await self._read_bounded(response)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return UpstreamProtocolError("upstream sent a truncated body", upstream=self.name)
        if isinstance(body, dict) and "error" in body:
            return self._error_from_body(body, 200, response.headers)
        return UpstreamProtocolError(
            "upstream answered without an event stream", upstream=self.name
        )

    @staticmethod
    async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
        buf = bytearray()
        async for part in response.content.iter_any():
            buf += part
            if len(buf) >= _MAX_ERROR_BODY:
                break
        return bytes(buf[:_MAX_ERROR_BODY])

    def _error_from_body(
        self, body: Any, status: int, headers: Mapping[str, str] | None
    ) -> UpstreamError:
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("code") or "no message")
        else:
            message = str(err or body)[:300]
        retry_after = parse_retry_after(headers.get("retry-after")) if headers else None
        if status == 200:  # an error event inside a stream that had started
            return UpstreamProtocolError(
                f"error in stream: {message}", upstream=self.name, status=status
            )
        return status_error(status, message, self.name, retry_after)

    def _translate_errors(self) -> AbstractContextManager[None]:
        return translate_errors(self.name, self.settings.connect_timeout, self._timeout.sock_read)

    async def probe(self) -> Probe:
        return await probe_models(
            self._client(), self._models_url, self._translate_errors(), self._status_error
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


if TYPE_CHECKING:
    from nobusy.upstreams.base import Upstream as UpstreamProtocol

    def _is_an_upstream(upstream: Upstream) -> UpstreamProtocol:
        return upstream  # mypy proves this kind has every member of the protocol


def _from_text_completion(chunk: Chunk) -> Chunk:
    """A ``text_completion`` chunk as the internal chunk (its text as ``delta.content``)."""
    choices = chunk.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else None
    if choice is None:
        out: Chunk = {"choices": []}
    else:
        text = choice.get("text")
        out = text_chunk(text if isinstance(text, str) else "", choice.get("finish_reason"))
    if chunk.get("usage"):
        out["usage"] = chunk["usage"]
    return out
