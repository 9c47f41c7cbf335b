"""The openai upstream's event-stream handling, against a real socket speaking raw SSE.

The shipped fake upstream covers whole faults; these cases need bytes the fake never sends
(CRLF line ends, multi-line data, comments between events), so a tiny raw server sends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nobusy.errors import UpstreamProtocolError
from nobusy.upstreams.base import UpstreamCall
from nobusy.upstreams.http import parse_retry_after
from nobusy.upstreams.openai import Settings, Upstream


async def raw_server(payload: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def sse_response(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def collect(payload: bytes) -> list[dict[str, Any]]:
    server, port = await raw_server(payload)
    upstream = Upstream("raw", Settings(kind="openai", base_url=f"http://127.0.0.1:{port}/v1"))
    try:
        stream: AsyncIterator[dict[str, Any]] = upstream.stream(
            UpstreamCall(model="m", body={"messages": []})
        )
        return [chunk async for chunk in stream]
    finally:
        await upstream.aclose()
        server.close()


CHUNK = b'{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}'
END = b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'


async def test_comments_crlf_and_multiline_data() -> None:
    body = (
        b": keep-alive\r\n\r\n"
        b"data: " + CHUNK + b"\r\n\r\n"
        b": keep-alive\n\n"
        b'data: {"choices":[{"index":0,\ndata: "delta":{"content":" there"},'
        b'"finish_reason":null}]}\n\n'
        b"data: " + END + b"\n\ndata: [DONE]\n\n"
    )
    chunks = await collect(sse_response(body))
    contents = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert contents == ["hi", " there", None]


async def test_malformed_json_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError, match="malformed JSON"):
        await collect(sse_response(b"data: " + CHUNK + b"\n\ndata: {oops\n\n"))


async def test_stream_without_finish_or_done_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError, match="without a finish reason"):
        await collect(sse_response(b"data: " + CHUNK + b"\n\n"))


async def test_error_event_inside_200_stream() -> None:
    body = b"data: " + CHUNK + b'\n\ndata: {"error": {"message": "boom"}}\n\n'
    with pytest.raises(UpstreamProtocolError, match="error in stream: boom"):
        await collect(sse_response(body))


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("30") == 30
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0


def test_empty_api_key_sends_no_authorization_header() -> None:
    """``api_key: ${KEY:-}`` that expanded to nothing means a keyless server, not "Bearer "."""
    keyless = Upstream("local", Settings(kind="openai", base_url="http://h/v1", api_key=""))  # type: ignore[arg-type]
    keyed = Upstream("cloud", Settings(kind="openai", base_url="http://h/v1", api_key="sk-1"))  # type: ignore[arg-type]
    assert "authorization" not in keyless._headers
    assert keyed._headers["authorization"] == "Bearer sk-1"
