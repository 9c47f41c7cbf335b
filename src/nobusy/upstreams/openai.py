"""``kind: openai`` — any OpenAI-compatible HTTP API (DeepSeek, Bailian, Ark, vLLM, Ollama, ...).

Requests go through httpx's API over aiohttp's connection pool (httpx-aiohttp): httpcore's
pool spent over half of nobusy's CPU at 32 concurrent requests, aiohttp's doubles throughput
(docs/benchmarks.md). The upstream is always asked to stream, even for non-streaming clients,
so that time to first token, keep-alive comments and truncation are seen the same way on every
path. httpx, aiohttp and httpx-sse errors, HTTP error statuses and error events inside a 200
stream are translated into ``nobusy.errors`` here and nowhere else.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport
from httpx_sse import EventSource, SSEError
from pydantic import AnyHttpUrl, Field, SecretStr

from nobusy.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRejectedRequest,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from nobusy.upstreams.base import Chunk, Probe, UpstreamCall, UpstreamSettings

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

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self.default_model = settings.default_model or ""
        headers = {"accept": "text/event-stream", **settings.headers}
        if settings.api_key is not None:
            headers["authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        limit = settings.max_connections
        self._client = httpx.AsyncClient(
            base_url=str(settings.base_url).rstrip("/") + "/",
            headers=headers,
            # Only a safety net: the router enforces first_token_timeout and idle_timeout
            # itself, because keep-alive comments would reset a socket read timeout.
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=max(settings.first_token_timeout, settings.idle_timeout),
                write=settings.idle_timeout,
                pool=settings.first_token_timeout,
            ),
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            transport=AiohttpTransport(
                limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
            ),
        )

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        body = dict(call.body)
        body["model"] = call.model or self.default_model
        body["stream"] = True
        # Ask for usage always: billing needs it even when the client did not.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        content = orjson.dumps(body)
        headers = {"content-type": "application/json"}
        if call.request_id:
            headers["x-request-id"] = call.request_id
        with self._translate_errors():
            async with self._client.stream(
                "POST", "chat/completions", content=content, headers=headers
            ) as response:
                if response.status_code != 200:
                    raise await self._status_error(response)
                ctype = response.headers.get("content-type", "")
                if not ctype.startswith("text/event-stream"):
                    raise await self._non_sse_body(response)
                async for chunk in self._events(response):
                    yield chunk

    async def _events(self, response: httpx.Response) -> AsyncIterator[Chunk]:
        finished = done = False
        async for event in EventSource(response).aiter_sse():
            data = event.data
            if data == "[DONE]":
                # Read on to the end of the body rather than return: a response left unread
                # cannot go back to the pool, and every request would pay a new connection.
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
                raise UpstreamProtocolError("upstream sent a non-object event", upstream=self.name)
            if "error" in chunk:
                raise self._error_from_body(chunk, 200, None)
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    finished = True
            yield chunk
        if not (finished or done):
            raise UpstreamProtocolError(
                "upstream stream ended without a finish reason or [DONE]", upstream=self.name
            )

    async def _status_error(self, response: httpx.Response) -> UpstreamError:
        raw = await self._read_bounded(response)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {"error": {"message": raw.decode("utf-8", "replace")[:300]}}
        return self._error_from_body(body, response.status_code, response.headers)

    async def _non_sse_body(self, response: httpx.Response) -> UpstreamError:
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
    async def _read_bounded(response: httpx.Response) -> bytes:
        buf = bytearray()
        async for part in response.aiter_bytes():
            buf += part
            if len(buf) >= _MAX_ERROR_BODY:
                break
        return bytes(buf[:_MAX_ERROR_BODY])

    def _error_from_body(
        self, body: Any, status: int, headers: httpx.Headers | None
    ) -> UpstreamError:
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("code") or "no message")
        else:
            message = str(err or body)[:300]
        retry_after = parse_retry_after(headers.get("retry-after")) if headers else None
        text = f"HTTP {status}: {message}" if status != 200 else f"error in stream: {message}"
        kwargs: dict[str, Any] = {"upstream": self.name, "status": status}
        if status in (429, 503, 529):
            return UpstreamOverloaded(text, retry_after=retry_after, **kwargs)
        if status in (401, 403):
            return UpstreamAuthFailed(text, **kwargs)
        if status in (400, 413, 422):
            return UpstreamRejectedRequest(message, **kwargs)
        if status == 200:
            return UpstreamProtocolError(text, **kwargs)
        return UpstreamError(text, retry_after=retry_after, **kwargs)

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.HTTPError as exc:
            raise self._translate(exc) from None
        except SSEError as exc:
            raise UpstreamProtocolError(f"bad event stream: {exc}", upstream=self.name) from None

    def _translate(self, exc: httpx.HTTPError) -> UpstreamError:
        name, cause = self.name, exc.__cause__
        # httpx-aiohttp maps aiohttp's errors coarsely (a server that hangs up mid-answer
        # becomes ConnectTimeout), so the original error decides where there is one.
        if isinstance(cause, aiohttp.ClientConnectorError):
            return UpstreamUnreachable(f"cannot connect: {_reason(cause)}", upstream=name)
        if isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
            return UpstreamProtocolError(
                f"connection broken mid-answer: {_reason(cause)}", upstream=name
            )
        if isinstance(cause, TimeoutError | aiohttp.ServerTimeoutError):
            return UpstreamTimeout("no data within idle_timeout", upstream=name)
        if isinstance(exc, httpx.ConnectTimeout):
            return UpstreamUnreachable("connect timed out", upstream=name)
        if isinstance(exc, httpx.ConnectError):
            return UpstreamUnreachable(f"cannot connect: {_reason(exc)}", upstream=name)
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout("no data within idle_timeout", upstream=name)
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return UpstreamProtocolError(
                f"connection broken mid-answer: {_reason(exc)}", upstream=name
            )
        return UpstreamError(f"HTTP error: {_reason(exc)}", upstream=name)

    async def probe(self) -> Probe:
        start = time.perf_counter()
        try:
            with self._translate_errors():
                response = await self._client.get("models", headers={"accept": "application/json"})
                if response.status_code != 200:
                    raise await self._status_error(response)
                data = response.json().get("data") or []
        except UpstreamError as exc:
            return Probe(False, (time.perf_counter() - start) * 1000, detail=exc.message)
        except ValueError:
            return Probe(False, (time.perf_counter() - start) * 1000, detail="bad /models JSON")
        models = [str(m.get("id")) for m in data if isinstance(m, dict)]
        return Probe(True, (time.perf_counter() - start) * 1000, models=models)

    async def aclose(self) -> None:
        await self._client.aclose()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _reason(exc: Exception) -> str:
    # httpx messages can echo the URL; the URL has no secret (the key travels in a header).
    return str(exc) or type(exc).__name__
