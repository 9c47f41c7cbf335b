"""``/v1/vector_stores``: OpenAI's Vector Stores API over the knowledge base.

Stores, the files in them (one at a time or in batches) and search. Putting a file in a store
answers at once with the file ``in_progress``; the ingestion workers (``knowledge.jobs``) make
it ``completed`` or ``failed`` with a ``last_error``, and ``file_counts`` follow. A key sees the
stores it created and those it was granted (``nobusy keys update --stores``); only the creator
(or the admin key) changes a store, a key it was granted may read and search it. A store
another key may not see is answered as missing (404), as an unknown id is.

A store with ``expires_after`` is ``expired`` once that many days pass without activity (a
search, a file put in it, a change); it takes no files and answers no search until it is given
a new ``expires_after``.

Beyond OpenAI's shape, a store file carries ``nobusy.progress`` (chunks embedded of chunks)
while it is embedded, and a search page carries ``nobusy.vector_store_status`` and
``file_counts``: a store still ingesting answers from what is done and says so.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.api.files import caller, knowledge, list_json, missing_file, page_args, shown
from nobusy.errors import InvalidRequest, NotFound, PermissionDenied
from nobusy.knowledge.base import KnowledgeBase
from nobusy.responses import JSONResponse
from nobusy.schema import parse_json_object
from nobusy.store.knowledge import STATUSES, Batch, Caller, StoreFile, StoreRecord

__all__ = ["batch_json", "not_expired", "routes", "store_file_json", "store_json", "visible_store"]

# How soon the SDKs' *_and_poll helpers ask again while files are in progress.
POLL_AFTER_MS = "200"
MAX_ATTRIBUTES = 16


def _counts(counts: dict[str, int]) -> dict[str, int]:
    return {status: counts[status] for status in (*STATUSES, "total")}


def store_json(kb: KnowledgeBase, store: StoreRecord) -> dict[str, Any]:
    """A vector store object; blocking (it counts the store's files)."""
    counts = kb.records.counts(store.id)
    expires_at = _expires_at(store)
    status = "in_progress" if counts["in_progress"] else "completed"
    if expires_at is not None and expires_at <= time.time():
        status = "expired"
    return {
        "id": store.id,
        "object": "vector_store",
        "created_at": store.created_at,
        "name": store.name,
        "usage_bytes": kb.records.usage_bytes(store.id),
        "file_counts": _counts(counts),
        "status": status,
        "expires_after": store.expires_after,
        "expires_at": expires_at,
        "last_active_at": store.last_active_at,
        "metadata": store.metadata,
        "nobusy": {
            "embedding_model": store.embedding_model,
            "chunks": kb.index(store.embedding_model).count(store.id),
        },
    }


def _expires_at(store: StoreRecord) -> int | None:
    """When a store with ``expires_after`` expires: that many days after its last activity."""
    days = (store.expires_after or {}).get("days")
    return store.last_active_at + int(days) * 86400 if days else None


def not_expired(store: StoreRecord) -> None:
    """Refuse a store past its ``expires_after`` (400 ``vector_store_expired``)."""
    expires_at = _expires_at(store)
    if expires_at is not None and expires_at <= time.time():
        raise InvalidRequest(
            f"Vector store {store.id} has expired ({(store.expires_after or {}).get('days')} "
            "days without activity); give it a new expires_after to use it again.",
            code="vector_store_expired",
        )


def store_file_json(kb: KnowledgeBase, placed: StoreFile) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": placed.file_id,
        "object": "vector_store.file",
        "usage_bytes": placed.usage_bytes,
        "created_at": placed.created_at,
        "vector_store_id": placed.store_id,
        "status": placed.status,
        "last_error": placed.last_error,
        "chunking_strategy": placed.chunking or {"type": "other"},
        "attributes": placed.attributes,
    }
    progress = kb.ingestor.progress.get((placed.store_id, placed.file_id))
    if placed.status == "in_progress" and progress is not None:
        body["nobusy"] = {"progress": {"done": progress.done, "total": progress.total}}
    elif placed.status == "completed":
        body["nobusy"] = {"chunks": placed.chunks}
    return body


def batch_json(kb: KnowledgeBase, batch: Batch) -> dict[str, Any]:
    counts = kb.records.counts(batch.store_id, batch.id)
    status = batch.status
    if status != "cancelled":
        status = "in_progress" if counts["in_progress"] else "completed"
        if counts["total"] and counts["failed"] == counts["total"]:
            status = "failed"
    return {
        "id": batch.id,
        "object": "vector_store.files_batch",
        "created_at": batch.created_at,
        "vector_store_id": batch.store_id,
        "status": status,
        "file_counts": _counts(counts),
    }


# --- Stores ------------------------------------------------------------------------------------


async def create_store(request: Request) -> Response:
    """Create a store (``name``, ``metadata``, ``expires_after``, ``file_ids``)."""
    kb, body, who = knowledge(request), await _body(request), caller(request)
    metadata = _metadata(body.get("metadata"))
    expires_after = _expires_after(body.get("expires_after"))
    name = _name(body.get("name"))
    file_ids = _ids(body.get("file_ids", []), "file_ids")
    chunking = _chunking(body.get("chunking_strategy"))

    def create() -> dict[str, Any]:
        _check_files(kb, who, file_ids)
        store = kb.records.create_store(who.key_id, name, kb.default_model, metadata, expires_after)
        _attach(kb, store.id, [(f, {}) for f in file_ids], chunking)
        return store_json(kb, store)

    return JSONResponse(await run_in_threadpool(create))


async def list_stores(request: Request) -> Response:
    kb, args, who = knowledge(request), page_args(request), caller(request)

    def listed() -> dict[str, Any]:
        page = kb.records.stores(who, **args)
        return list_json([store_json(kb, s) for s in page.data], page.has_more)

    return JSONResponse(await run_in_threadpool(listed))


async def get_store(request: Request) -> Response:
    kb = knowledge(request)
    store = await visible_store(request)
    return JSONResponse(await run_in_threadpool(store_json, kb, store))


async def update_store(request: Request) -> Response:
    """Change a store's ``name``, ``metadata`` or ``expires_after``."""
    kb, body = knowledge(request), await _body(request)
    store = await visible_store(request, write=True)
    name = _name(body.get("name"))
    metadata = _metadata(body["metadata"]) if "metadata" in body else None
    expires_after = _expires_after(body.get("expires_after"))

    def update() -> dict[str, Any]:
        kb.records.update_store(store.id, name=name, metadata=metadata, expires_after=expires_after)
        updated = kb.records.store(Caller(None, admin=True), store.id)
        assert updated is not None
        return store_json(kb, updated)

    return JSONResponse(await run_in_threadpool(update))


async def delete_store(request: Request) -> Response:
    """Delete a store and its chunks; the files themselves stay."""
    kb = knowledge(request)
    store = await visible_store(request, write=True)

    def delete() -> None:
        kb.records.delete_store(store.id)
        kb.forget_store(store)

    await run_in_threadpool(delete)
    return JSONResponse({"id": store.id, "object": "vector_store.deleted", "deleted": True})


# --- A store's files ---------------------------------------------------------------------------


async def add_file(request: Request) -> Response:
    """Put a file in a store (``file_id``, ``attributes``, ``chunking_strategy``)."""
    kb, body, who = knowledge(request), await _body(request), caller(request)
    store = await visible_store(request, write=True)
    not_expired(store)
    file_id = body.get("file_id")
    if not isinstance(file_id, str) or not file_id:
        raise InvalidRequest("Missing required parameter: 'file_id'.", param="file_id")
    attributes = _attributes(body.get("attributes"))
    chunking = _chunking(body.get("chunking_strategy"))

    def add() -> dict[str, Any]:
        _check_files(kb, who, [file_id])
        (placed,) = _attach(kb, store.id, [(file_id, attributes)], chunking)
        return store_file_json(kb, placed)

    return JSONResponse(await run_in_threadpool(add))


async def list_files(request: Request) -> Response:
    """The store's files (``filter`` by status, ``limit``, ``after``, ``order``)."""
    kb, args = knowledge(request), page_args(request)
    store = await visible_store(request)
    status = _status_filter(request)

    def listed() -> dict[str, Any]:
        page = kb.records.store_files(store.id, status=status, **args)
        return list_json([store_file_json(kb, f) for f in page.data], page.has_more)

    return JSONResponse(await run_in_threadpool(listed))


async def get_file(request: Request) -> Response:
    kb = knowledge(request)
    placed = await _store_file(request)
    return JSONResponse(store_file_json(kb, placed))


async def update_file(request: Request) -> Response:
    """Replace a store file's ``attributes`` (what search ``filters`` test)."""
    kb, body = knowledge(request), await _body(request)
    store = await visible_store(request, write=True)
    placed = await _store_file(request, store)
    if "attributes" not in body:
        raise InvalidRequest("Missing required parameter: 'attributes'.", param="attributes")
    attributes = _attributes(body["attributes"])

    def update() -> dict[str, Any]:
        kb.records.set_attributes(store.id, placed.file_id, attributes)
        kb.index(store.embedding_model).set_attributes(store.id, placed.file_id, attributes)
        updated = kb.records.store_file(store.id, placed.file_id)
        if updated is None:
            raise NotFound(f"No file {placed.file_id} in vector store {store.id}.", param="file_id")
        return store_file_json(kb, updated)

    return JSONResponse(await run_in_threadpool(update))


async def remove_file(request: Request) -> Response:
    """Take a file out of a store (its chunks go; the file stays)."""
    kb = knowledge(request)
    store = await visible_store(request, write=True)
    placed = await _store_file(request, store)

    def remove() -> None:
        kb.records.detach(store.id, placed.file_id)
        kb.forget_file(store, placed.file_id)

    await run_in_threadpool(remove)
    return JSONResponse(
        {"id": placed.file_id, "object": "vector_store.file.deleted", "deleted": True}
    )


# --- Batches -----------------------------------------------------------------------------------


async def create_batch(request: Request) -> Response:
    """Put several files in a store at once: ``file_ids`` (with shared ``attributes``) or
    ``files`` (each with its own)."""
    kb, body, who = knowledge(request), await _body(request), caller(request)
    store = await visible_store(request, write=True)
    not_expired(store)
    chunking = _chunking(body.get("chunking_strategy"))
    shared = _attributes(body.get("attributes"))
    if "files" in body:
        entries = body["files"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InvalidRequest("files must be a list of objects with a file_id.", param="files")
        specs = [
            (_ids([e.get("file_id")], "files")[0], _attributes(e.get("attributes")) or shared)
            for e in entries
        ]
    else:
        specs = [(f, shared) for f in _ids(body.get("file_ids"), "file_ids")]
    if not specs:
        raise InvalidRequest("A batch needs file_ids or files.", param="file_ids")

    def create() -> dict[str, Any]:
        _check_files(kb, who, [f for f, _ in specs])
        batch = kb.records.create_batch(store.id)
        _attach(kb, store.id, specs, chunking, batch.id)
        return batch_json(kb, batch)

    return JSONResponse(await run_in_threadpool(create))


async def get_batch(request: Request) -> Response:
    kb = knowledge(request)
    batch = await _batch(request)
    body = await run_in_threadpool(batch_json, kb, batch)
    headers = {"openai-poll-after-ms": POLL_AFTER_MS} if body["status"] == "in_progress" else {}
    return JSONResponse(body, headers=headers)


async def cancel_batch(request: Request) -> Response:
    """Cancel a batch: its files not yet done become ``cancelled``."""
    kb = knowledge(request)
    batch = await _batch(request, write=True)

    def cancel() -> dict[str, Any]:
        kb.records.cancel_batch(batch.id)
        found = kb.records.batch(batch.store_id, batch.id)
        assert found is not None
        return batch_json(kb, found)

    return JSONResponse(await run_in_threadpool(cancel))


async def batch_files(request: Request) -> Response:
    kb, args = knowledge(request), page_args(request)
    batch = await _batch(request)
    status = _status_filter(request)

    def listed() -> dict[str, Any]:
        page = kb.records.store_files(batch.store_id, status=status, batch_id=batch.id, **args)
        return list_json([store_file_json(kb, f) for f in page.data], page.has_more)

    return JSONResponse(await run_in_threadpool(listed))


# --- Helpers -----------------------------------------------------------------------------------


async def _body(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


async def visible_store(request: Request, *, write: bool = False) -> StoreRecord:
    """The store in the path if the caller may see it (404 otherwise); with ``write``, 403
    unless the caller may also change it."""
    kb, who = knowledge(request), caller(request)
    store_id = request.path_params["store_id"]
    store = await run_in_threadpool(kb.records.store, who, store_id)
    if store is None:
        raise NotFound(f"No such vector store: {shown(store_id)}", param="vector_store_id")
    if write and not (who.admin or store.owner == who.key_id):
        raise PermissionDenied(
            f"Vector store {store_id} was granted to this key to read and search; only the "
            "key that created it (or the admin key) may change it."
        )
    return store


async def _store_file(request: Request, store: StoreRecord | None = None) -> StoreFile:
    store = store or await visible_store(request)
    file_id = request.path_params["file_id"]
    placed = await run_in_threadpool(knowledge(request).records.store_file, store.id, file_id)
    if placed is None:
        raise NotFound(f"No file {shown(file_id)} in vector store {store.id}.", param="file_id")
    return placed


async def _batch(request: Request, *, write: bool = False) -> Batch:
    store = await visible_store(request, write=write)
    batch_id = request.path_params["batch_id"]
    batch = await run_in_threadpool(knowledge(request).records.batch, store.id, batch_id)
    if batch is None:
        raise NotFound(f"No such file batch: {shown(batch_id)}", param="batch_id")
    return batch


def _check_files(kb: KnowledgeBase, who: Caller, file_ids: list[str]) -> None:
    for file_id in file_ids:
        if kb.records.file(who, file_id) is None:
            raise missing_file(file_id)


def _attach(
    kb: KnowledgeBase,
    store_id: str,
    specs: list[tuple[str, dict[str, Any]]],
    chunking: dict[str, Any] | None,
    batch_id: str | None = None,
) -> list[StoreFile]:
    placed = [kb.records.attach(store_id, f, a, chunking, batch_id) for f, a in specs]
    for entry in placed:
        kb.ingestor.submit(store_id, entry.file_id)
    return placed


def _status_filter(request: Request) -> str | None:
    status = request.query_params.get("filter")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"filter must be one of {', '.join(STATUSES)}.", param="filter")
    return status


def _ids(value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"{param} must be a list of file ids.", param=param)
    if len(value) > 2000:
        raise InvalidRequest(f"{param}: at most 2000 files at once.", param=param)
    return list(dict.fromkeys(value))


def _name(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidRequest("name must be a string.", param="name")
    return value


def _metadata(value: Any) -> dict[str, Any]:
    """Up to 16 string pairs (keys ≤ 64 characters, values ≤ 512), as OpenAI allows."""
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > 16
        or not all(isinstance(k, str) and len(k) <= 64 for k in value)
        or not all(isinstance(v, str) and len(v) <= 512 for v in value.values())
    ):
        raise InvalidRequest(
            "metadata: at most 16 pairs of strings (keys up to 64 characters, values up to 512).",
            param="metadata",
        )
    return value


def _attributes(value: Any) -> dict[str, Any]:
    """Up to 16 attributes: strings (≤ 512 characters), numbers or booleans."""
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > MAX_ATTRIBUTES
        or not all(isinstance(k, str) and len(k) <= 64 for k in value)
        or not all(
            isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 512)
            for v in value.values()
        )
    ):
        raise InvalidRequest(
            "attributes: at most 16 keys, each a string up to 512 characters, a number or a "
            "boolean.",
            param="attributes",
        )
    return value


def _expires_after(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    days = value.get("days") if isinstance(value, dict) else None
    if (
        not isinstance(value, dict)
        or value.get("anchor") != "last_active_at"
        or not isinstance(days, int)
        or not 1 <= days <= 365
    ):
        raise InvalidRequest(
            "expires_after must be {'anchor': 'last_active_at', 'days': 1 to 365}.",
            param="expires_after",
        )
    return {"anchor": "last_active_at", "days": days}


def _chunking(value: Any) -> dict[str, Any] | None:
    """``auto`` (the settings' sizes) or ``static`` with OpenAI's bounds."""
    if value is None or value == {"type": "auto"}:
        return None
    static = value.get("static") if isinstance(value, dict) else None
    size = static.get("max_chunk_size_tokens") if isinstance(static, dict) else None
    overlap = static.get("chunk_overlap_tokens") if isinstance(static, dict) else None
    if (
        not isinstance(value, dict)
        or value.get("type") != "static"
        or not isinstance(size, int)
        or not isinstance(overlap, int)
        or not 100 <= size <= 4096
        or not 0 <= overlap <= size // 2
    ):
        raise InvalidRequest(
            "chunking_strategy must be {'type': 'auto'} or {'type': 'static', 'static': "
            "{'max_chunk_size_tokens': 100 to 4096, 'chunk_overlap_tokens': up to half of it}}.",
            param="chunking_strategy",
        )
    return {
        "type": "static",
        "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap},
    }


routes: list[BaseRoute] = [
    Route("/v1/vector_stores", create_store, methods=["POST"]),
    Route("/v1/vector_stores", list_stores, methods=["GET"]),
    Route("/v1/vector_stores/{store_id}", get_store, methods=["GET"]),
    Route("/v1/vector_stores/{store_id}", update_store, methods=["POST"]),
    Route("/v1/vector_stores/{store_id}", delete_store, methods=["DELETE"]),
    Route("/v1/vector_stores/{store_id}/files", add_file, methods=["POST"]),
    Route("/v1/vector_stores/{store_id}/files", list_files, methods=["GET"]),
    Route("/v1/vector_stores/{store_id}/files/{file_id}", get_file, methods=["GET"]),
    Route("/v1/vector_stores/{store_id}/files/{file_id}", update_file, methods=["POST"]),
    Route("/v1/vector_stores/{store_id}/files/{file_id}", remove_file, methods=["DELETE"]),
    Route("/v1/vector_stores/{store_id}/file_batches", create_batch, methods=["POST"]),
    Route("/v1/vector_stores/{store_id}/file_batches/{batch_id}", get_batch, methods=["GET"]),
    Route(
        "/v1/vector_stores/{store_id}/file_batches/{batch_id}/cancel",
        cancel_batch,
        methods=["POST"],
    ),
    Route(
        "/v1/vector_stores/{store_id}/file_batches/{batch_id}/files", batch_files, methods=["GET"]
    ),
]
