"""``POST /v1/nobusy/extract``: a document's text, for a chat message that attaches a file.

The console sends a file's bytes as the body and its name in ``?filename=``; the answer is its
text, read by the same parsers the knowledge base ingests with (pdf, docx, html, txt, md), so a
PDF attached to a chat message becomes text without a parser in the browser. Nothing is kept.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.errors import InvalidRequest
from nobusy.knowledge.parsers import ParseError, parse
from nobusy.responses import JSONResponse
from nobusy.state import app_state

__all__ = ["extract", "routes"]


async def extract(request: Request) -> Response:
    """The text of the document in the body, as the knowledge base would read it."""
    filename = request.query_params.get("filename", "").strip()
    if not filename:
        raise InvalidRequest("filename is required (?filename=notes.pdf).", param="filename")
    data = await request.body()
    limit = app_state(request).settings.knowledge.max_file_bytes
    try:
        text = await run_in_threadpool(parse, filename, data, max_bytes=limit)
    except ParseError as error:
        raise InvalidRequest(f"{filename}: {error.message}", param="file") from None
    body = {"object": "nobusy.extracted_text", "filename": filename, "text": text}
    return JSONResponse({**body, "characters": len(text)})


routes: list[BaseRoute] = [Route("/v1/nobusy/extract", extract, methods=["POST"])]
