"""The HTTP boundary the HTTP upstream kinds share: aiohttp's failures as ``nobusy.errors``.

The ``openai`` kind and the ``anthropic`` kind (and the server kinds built on the first) speak
aiohttp and hand httpx-sse their event streams; a connection refused, a body cut off, a socket
that stops sending, a malformed event stream all become the same upstream errors with the same
short phrases, whichever wire format the upstream speaks.
"""

from __future__ import annotations

import codecs
import email.utils
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import cast

import aiohttp
import httpx
from httpx_sse import SSEError

from nobusy.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from nobusy.upstreams.base import Probe

__all__ = [
    "SSEBody",
    "new_session",
    "parse_retry_after",
    "phrase",
    "probe_models",
    "safety_timeout",
    "translate_errors",
]


def safety_timeout(connect: float, first_token: float, idle: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for an upstream: a safety net only. The router keeps the real
    deadlines (first token, idle), because keep-alive comments and pings would reset a socket
    read timeout."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=connect + first_token,
        sock_connect=connect,
        sock_read=max(first_token, idle),
    )


def new_session(
    limit: int, headers: dict[str, str], timeout: aiohttp.ClientTimeout
) -> aiohttp.ClientSession:
    """An upstream's connection pool. Made on first use by the caller: an aiohttp session
    belongs to the running event loop."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
        headers=headers,
        timeout=timeout,
        auto_decompress=True,
        trust_env=False,
    )


@contextmanager
def translate_errors(
    name: str, connect_timeout: float, read_timeout: float | None
) -> Iterator[None]:
    """aiohttp's and httpx-sse's exceptions inside the block, raised as upstream ``name``'s
    errors."""
    # Messages are short phrases an operator reads in a log line, not aiohttp's wording
    # ("Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed ...]").
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnreachable(f"cannot connect: {phrase(exc)}", upstream=name) from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamProtocolError(
            f"connection broken mid-answer: {phrase(exc)}", upstream=name
        ) from None
    except aiohttp.ConnectionTimeoutError:
        raise UpstreamUnreachable(
            f"cannot connect: timed out after {connect_timeout:g} s", upstream=name
        ) from None
    except TimeoutError:
        # Only aiohttp's own socket timeouts land here: the router's deadlines cancel the
        # caller's generator instead of raising inside it.
        raise UpstreamTimeout(
            f"timed out after {read_timeout or 0:g} s waiting for data", upstream=name
        ) from None
    except aiohttp.ClientOSError as exc:
        raise UpstreamProtocolError(f"connection failed: {phrase(exc)}", upstream=name) from None
    except SSEError as exc:
        raise UpstreamProtocolError(f"bad event stream: {exc}", upstream=name) from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"HTTP error: {phrase(exc)}", upstream=name) from None


class SSEBody:
    """What httpx-sse's parser reads from a response: its headers and its body as text."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.headers = response.headers
        self._content = response.content

    @classmethod
    def of(cls, response: aiohttp.ClientResponse) -> httpx.Response:
        # httpx-sse types its argument as httpx.Response but uses only these two members.
        return cast(httpx.Response, cls(response))

    async def aiter_text(self) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async for data in self._content.iter_any():
            text = decoder.decode(data)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail


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


def phrase(exc: Exception) -> str:
    """aiohttp's exception as a short phrase: "connection refused", "host name not found"."""
    cause = getattr(exc, "os_error", None) or exc
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(cause, socket.gaierror):
        return "host name not found"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the upstream closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer's body was cut off"
    for kind, phrase in _OS_PHRASES:
        if isinstance(cause, kind):
            return phrase
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    # The URL in other messages has no secret (the key travels in a header).
    return str(exc) or type(exc).__name__


_OS_PHRASES: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"),
    (TimeoutError, "timed out connecting"),
)


async def probe_models(
    session: aiohttp.ClientSession,
    url: str,
    translated: AbstractContextManager[None],
    status_error: Callable[[aiohttp.ClientResponse], Awaitable[UpstreamError]],
    *,
    missing_ok: bool = False,
) -> Probe:
    """GET the upstream's model list at ``url``: reachable, how fast, which models. With
    ``missing_ok`` a 404 still counts as reachable (an endpoint that answered HTTP with our key
    but has no list, as some Anthropic-compatible ones)."""
    start = time.perf_counter()
    try:
        with translated:
            async with session.get(url, headers={"accept": "application/json"}) as response:
                if response.status == 404 and missing_ok:
                    return Probe(True, (time.perf_counter() - start) * 1000, detail="no model list")
                if response.status != 200:
                    raise await status_error(response)
                data = (await response.json(content_type=None)).get("data") or []
    except UpstreamError as exc:
        return Probe(False, (time.perf_counter() - start) * 1000, detail=exc.message)
    except (ValueError, AttributeError):
        return Probe(False, (time.perf_counter() - start) * 1000, detail="bad /models JSON")
    models = [str(m.get("id")) for m in data if isinstance(m, dict)]
    return Probe(True, (time.perf_counter() - start) * 1000, models=models)
