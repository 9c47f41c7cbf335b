"""``POST /v1/nobusy/extract``: a document's text, for a chat message that attaches a file.

The console sends ``{"filename": ..., "data": base64 of the bytes}`` (JSON, as every other
body here: ``/v1/files`` alone takes multipart); the answer is the text, read by the parsers the
knowledge base ingests with (pdf, docx, html, txt, md), so a PDF attached to a chat message
becomes text without a parser in the browser. Nothing is kept.
"""

from __future__ import annotations

import base64
import binascii

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.errors import InvalidRequest
from nobusy.knowledge.parsers import ParseError, parse
from nobusy.responses import JSONResponse
from nobusy.schema import parse_json_object
from nobusy.state import app_state

__all__ = ["extract", "routes"]


async def extract(request: Request) -> Response:
    """The text of the document in the body, as the knowledge base would read it."""
    body = parse_json_object(await request.body())
    filename = body.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise InvalidRequest("filename must be the file's name, e.g. notes.pdf.", param="filename")
    try:
        data = base64.b64decode(str(body.get("data", "")), validate=True)
    except binascii.Error:
        raise InvalidRequest("data must be the file's bytes in base64.", param="data") from None
    limit = app_state(request).settings.knowledge.max_file_bytes
    try:
        text = await run_in_threadpool(parse, filename, data, max_bytes=limit)
    except ParseError as error:
        raise InvalidRequest(f"{filename}: {error.message}", param="file") from None
    body = {"object": "nobusy.extracted_text", "filename": filename, "text": text}
    return JSONResponse({**body, "characters": len(text)})


routes: list[BaseRoute] = [Route("/v1/nobusy/extract", extract, methods=["POST"])]
