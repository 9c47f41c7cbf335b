"""``/v1/files``: OpenAI's Files API, the way documents enter the knowledge base.

Upload (multipart, as the ``openai`` SDK's ``files.create`` sends it), list, retrieve, read
back and delete. A key sees the files it uploaded; the admin key (``admin_key``) sees every
file; without keys, files belong to nobody and everyone on the allowed hosts sees them. A file
another key uploaded is answered as missing (404), as an unknown id is. Deleting a file takes
it out of every vector store that held it.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Literal

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.errors import InvalidRequest, NotFound
from nobusy.keys import Key
from nobusy.knowledge.base import KnowledgeBase
from nobusy.responses import JSONResponse
from nobusy.state import app_state
from nobusy.store.knowledge import Caller, FileRecord, Page, new_id

__all__ = [
    "PURPOSES",
    "caller",
    "delete_file",
    "file_content",
    "file_json",
    "get_file",
    "knowledge",
    "list_files",
    "list_json",
    "missing_file",
    "page_args",
    "routes",
    "shown",
    "upload_file",
]

# OpenAI's purposes; `assistants` and `user_data` are the ones vector stores read.
PURPOSES = ("assistants", "user_data", "batch", "fine-tune", "vision", "evals")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_OUR_ID = re.compile(r"(?:file-|vs_|vsfb_)[0-9a-f]{24}")


def caller(request: Request) -> Caller:
    """Who asks: the admin key's holder, a key, or nobody in particular while no key exists."""
    key: Key | None = getattr(request.state, "key", None)
    return Caller(key.id if key is not None else None, bool(getattr(request.state, "admin", False)))


def knowledge(request: Request) -> KnowledgeBase:
    kb = app_state(request).knowledge
    assert kb is not None  # opened by state.running with everything else
    return kb


def file_json(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
    }


def list_json(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A page of a list in OpenAI's cursor shape (the SDKs page on with ``after=last_id``)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def page_args(request: Request, *, max_limit: int = 100) -> dict[str, Any]:
    """``limit`` (1–100, 20 by default), ``after`` and ``order`` (asc|desc) from the query."""
    query = request.query_params
    raw = query.get("limit", "20")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= max_limit:
        raise InvalidRequest(f"limit must be a whole number from 1 to {max_limit}.", param="limit")
    order: Literal["asc", "desc"] = "desc"
    if query.get("order", "desc") == "asc":
        order = "asc"
    elif query.get("order", "desc") != "desc":
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
    return {"limit": int(raw), "after": query.get("after"), "order": order}


def shown(value: str) -> str:
    """An id from the request, for an error message: only one shaped like the ids nobusy
    gives is echoed, so a message never carries whatever a client put in a path."""
    return value if _OUR_ID.fullmatch(value) else "(not an id nobusy gives)"


def missing_file(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {shown(file_id)}", param="file_id")


async def upload_file(request: Request) -> Response:
    """Upload a file (multipart: ``file``, ``purpose``, optional ``expires_after``); kept under
    ``data_dir/files``."""
    kb = knowledge(request)
    async with request.form(max_files=1, max_fields=8) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Missing required parameter: 'file'.", param="file")
        if purpose not in PURPOSES:
            raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}.", param="purpose")
        filename = _filename(upload.filename)
        expires_after = _expires_after(
            form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
        )
        file_id = new_id("file-")
        size, digest = await run_in_threadpool(kb.blobs.write, file_id, upload.file)
    try:
        record = await run_in_threadpool(
            kb.records.add_file,
            file_id,
            caller(request).key_id,
            filename,
            purpose,
            size,
            digest,
            expires_after,
        )
    except BaseException:
        kb.blobs.delete(file_id)
        raise
    return JSONResponse(file_json(record))


def _expires_after(anchor: Any, seconds: Any) -> int | None:
    """``expires_after`` of an upload (form fields ``expires_after[anchor]`` and
    ``[seconds]``, as the SDK sends them): seconds after ``created_at``, 1 hour to 30 days."""
    if anchor is None and seconds is None:
        return None
    if (
        anchor != "created_at"
        or not isinstance(seconds, str)
        or not (seconds.isascii() and seconds.isdigit())
    ):
        raise InvalidRequest(
            "expires_after must be {'anchor': 'created_at', 'seconds': 3600 to 2592000}.",
            param="expires_after",
        )
    if not 3600 <= int(seconds) <= 2592000:
        raise InvalidRequest(
            "expires_after.seconds must be between 3600 (1 hour) and 2592000 (30 days).",
            param="expires_after",
        )
    return int(seconds)


def _filename(name: str | None) -> str:
    """The name's last part, without control characters, at most 255 characters."""
    name = _UNSAFE.sub("", PurePosixPath((name or "").replace("\\", "/")).name)[:255]
    if not name:
        raise InvalidRequest("The uploaded file needs a filename.", param="file")
    return name


async def list_files(request: Request) -> Response:
    """The caller's files, newest first (``purpose``, ``limit``, ``after``, ``order``)."""
    kb, args = knowledge(request), page_args(request, max_limit=10000)
    purpose = request.query_params.get("purpose")
    page: Page = await run_in_threadpool(
        lambda: kb.records.files(caller(request), purpose=purpose, **args)
    )
    return JSONResponse(list_json([file_json(f) for f in page.data], page.has_more))


async def _visible_file(request: Request) -> FileRecord:
    file_id = request.path_params["file_id"]
    record = await run_in_threadpool(knowledge(request).records.file, caller(request), file_id)
    if record is None:
        raise missing_file(file_id)
    return record


async def get_file(request: Request) -> Response:
    return JSONResponse(file_json(await _visible_file(request)))


async def file_content(request: Request) -> Response:
    """The file's bytes, as uploaded."""
    record = await _visible_file(request)
    data = await run_in_threadpool(knowledge(request).blobs.read, record.id)
    return Response(data, media_type="application/octet-stream")


async def delete_file(request: Request) -> Response:
    """Delete a file: its bytes, its record, and its chunks in every store that held it."""
    kb, record = knowledge(request), await _visible_file(request)

    await run_in_threadpool(kb.delete_file, record.id)
    return JSONResponse({"id": record.id, "object": "file", "deleted": True})


routes: list[BaseRoute] = [
    Route("/v1/files", upload_file, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", get_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
]
