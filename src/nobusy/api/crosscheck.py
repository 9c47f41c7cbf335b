"""``POST /v1/nobusy/crosscheck``: the same question to 2-5 sources, where their answers agree,
and advertising flagged (``nobusy.crosscheck``). ``"stream": true`` answers in SSE: a
``source`` event per answer as it arrives, then one ``analysis`` event with the whole report."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.crosscheck.service import parse, run
from nobusy.crosscheck.sources import Check
from nobusy.errors import NobusyError
from nobusy.keys import Key
from nobusy.responses import EventStreamResponse, JSONResponse
from nobusy.state import app_state

__all__ = ["crosscheck", "routes"]


async def crosscheck(request: Request) -> Response:
    """Ask every source, then return each answer with its support, flags and verdict."""
    state = app_state(request)
    state.drain.check()
    raw = await request.body()
    key: Key | None = getattr(request.state, "key", None)
    check = parse(raw, state, key, state.settings.crosscheck.max_tokens)
    if check.stream:
        return EventStreamResponse(_events(request, check), {"x-nobusy-crosscheck": check.id})
    report: dict[str, object] = {}
    async for kind, data in run(request, check):
        if kind == "analysis":
            report = data
    return JSONResponse(report, headers={"x-nobusy-crosscheck": check.id})


async def _events(request: Request, check: Check) -> AsyncIterator[bytes]:
    try:
        async for kind, data in run(request, check):
            yield b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
    except NobusyError as exc:
        yield b"event: error\ndata: " + orjson.dumps(exc.body()) + b"\n\n"
    yield b"data: [DONE]\n\n"


routes: list[BaseRoute] = [Route("/v1/nobusy/crosscheck", crosscheck, methods=["POST"])]
