"""``GET /openapi.json``: the API described from the same types that validate requests."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy import __version__
from nobusy.api.openapi_protocols import protocol_paths
from nobusy.responses import JSONResponse
from nobusy.schema import ChatRequest

__all__ = ["openapi_json", "openapi_spec", "routes"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_TOKENS = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
_EMBEDDING_REQUEST = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string"},
        "input": {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                _TOKENS,
                {"type": "array", "items": _TOKENS, "minItems": 1},
            ]
        },
        "encoding_format": {"enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
        "user": {"type": "string"},
    },
}


_SEARCH_REQUEST = {
    "type": "object",
    "required": ["query"],
    "properties": {
        "query": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "max_num_results": {"type": "integer", "minimum": 1, "maximum": 50},
        "filters": {"type": "object"},
        "ranking_options": {"type": "object"},
        "rewrite_query": {"type": "boolean"},
    },
}
_UPLOAD = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"enum": ["assistants", "user_data", "batch", "fine-tune", "vision", "evals"]},
    },
}


def _operation(
    summary: str, operation_id: str, body: dict[str, Any] | None = None, media: str = ""
) -> dict[str, Any]:
    """One operation of the Files or Vector Stores API: JSON in (when ``body``), JSON out."""
    spec: dict[str, Any] = {
        "summary": summary,
        "operationId": operation_id,
        "responses": {
            "200": _json({"type": "object"}, "The object, in OpenAI's shape."),
            **_errors(400, 401, 403, 404),
        },
    }
    if body is not None:
        content = {media or "application/json": {"schema": body}}
        spec["requestBody"] = {"required": True, "content": content}
    return spec


def _knowledge_paths() -> dict[str, Any]:
    """The Files and Vector Stores API (``api/files.py``, ``vector_stores.py``,
    ``vector_search.py``)."""
    obj = {"type": "object"}
    store, file = "/v1/vector_stores/{store_id}", "/v1/vector_stores/{store_id}/files/{file_id}"
    batch = "/v1/vector_stores/{store_id}/file_batches/{batch_id}"
    paths: dict[str, Any] = {
        "/v1/files": {
            "post": _operation("Upload a file.", "createFile", _UPLOAD, "multipart/form-data"),
            "get": _operation("List files.", "listFiles"),
        },
        "/v1/files/{file_id}": {
            "get": _operation("Retrieve a file.", "retrieveFile"),
            "delete": _operation("Delete a file.", "deleteFile"),
        },
        "/v1/files/{file_id}/content": {"get": _operation("A file's bytes.", "downloadFile")},
        "/v1/vector_stores": {
            "post": _operation("Create a vector store.", "createVectorStore", obj),
            "get": _operation("List vector stores.", "listVectorStores"),
        },
        store: {
            "get": _operation("Retrieve a vector store.", "getVectorStore"),
            "post": _operation("Modify a vector store.", "modifyVectorStore", obj),
            "delete": _operation("Delete a vector store.", "deleteVectorStore"),
        },
        f"{store}/files": {
            "post": _operation("Put a file in a store.", "createVectorStoreFile", obj),
            "get": _operation("List a store's files.", "listVectorStoreFiles"),
        },
        file: {
            "get": _operation("A store's file and its status.", "getVectorStoreFile"),
            "post": _operation("Change a store file's attributes.", "updateVectorStoreFile", obj),
            "delete": _operation("Take a file out of a store.", "deleteVectorStoreFile"),
        },
        f"{store}/file_batches": {
            "post": _operation("Put files in a store.", "createVectorStoreFileBatch", obj)
        },
        batch: {"get": _operation("A batch and its counts.", "getVectorStoreFileBatch")},
        f"{batch}/cancel": {
            "post": _operation("Cancel a batch.", "cancelVectorStoreFileBatch", {"type": "object"})
        },
        f"{batch}/files": {"get": _operation("A batch's files.", "listFilesInVectorStoreBatch")},
        f"{store}/search": {
            "post": _operation("Search a store.", "searchVectorStore", _SEARCH_REQUEST)
        },
    }
    for path, operations in paths.items():
        names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
        for operation in operations.values():
            operation["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in names
            ]
    return paths


def _managed_paths() -> dict[str, Any]:
    """Upstreams and aliases edited live, and reload (admin; ``api/managed.py``,
    ``api/reload.py``; docs/reload.md)."""
    obj = {"type": "object"}
    paths: dict[str, Any] = {
        "/v1/nobusy/reload": {
            "post": _operation("Reload the config file and the managed overlay.", "reload")
        },
        "/v1/nobusy/upstreams": {
            "post": _operation("Add an upstream (managed overlay).", "createUpstream", obj)
        },
        "/v1/nobusy/aliases": {
            "get": _operation("Every model alias, with its routes.", "listAliases"),
            "post": _operation("Add a model alias (managed overlay).", "createAlias", obj),
        },
    }
    for kind, section in (("Upstream", "upstreams"), ("Alias", "aliases")):
        one = f"/v1/nobusy/{section}/{{name}}"
        paths[one] = {
            "get": _operation(f"One {kind.lower()}'s definition.", f"get{kind}"),
            "patch": _operation("Change the keys given.", f"update{kind}", obj),
            "delete": _operation("Remove it (refused while in use).", f"delete{kind}"),
        }
        for action in ("enable", "disable"):
            paths[f"{one}/{action}"] = {
                "post": _operation(f"{action.capitalize()} it.", f"{action}{kind}")
            }
    paths["/v1/nobusy/upstreams/{name}/probe"] = {
        "post": _operation("A one-token probe: status, latency, error.", "probeUpstream")
    }
    for path, operations in paths.items():
        if "{name}" in path:
            for operation in operations.values():
                operation["parameters"] = [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ]
    return paths


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ERROR, "An error in OpenAI's shape.") for s in statuses}


@cache
def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document for nobusy's HTTP API."""
    (request_schema,), components = msgspec.json.schema_components(
        [ChatRequest], ref_template="#/components/schemas/{name}"
    )
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    }
    any_object = {"type": "object"}
    other_paths, other_schemas = protocol_paths()  # Messages, Responses, completions
    components.update(other_schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nobusy",
            "version": __version__,
            "description": "OpenAI-compatible gateway over many model sources.",
        },
        "paths": {
            "/v1/chat/completions": {
                "post": {
                    "summary": "Create a chat completion (streaming with `stream: true`).",
                    "operationId": "createChatCompletion",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": request_schema}},
                    },
                    "responses": {
                        "200": {
                            "description": "A chat.completion, or an SSE stream of chunks.",
                            "content": {
                                "application/json": {"schema": any_object},
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(400, 404, 408, 413, 502, 503, 504),
                    },
                }
            },
            "/v1/nobusy/crosscheck": {
                "post": {
                    "summary": "Ask 2-5 sources the same question; show where they agree and "
                    "flag advertising (SSE with `stream: true`).",
                    "operationId": "createCrossCheck",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": any_object}},
                    },
                    "responses": {
                        "200": {
                            "description": "The report, or SSE `source` events then `analysis`.",
                            "content": {
                                "application/json": {"schema": any_object},
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(400, 403, 429),
                    },
                }
            },
            "/v1/nobusy/extract": {
                "post": {
                    **_operation(
                        "A document's text (pdf, docx, html, txt, md), for attaching it to a "
                        "chat message: `filename` and `data` (its bytes in base64).",
                        "extractText",
                        any_object,
                    ),
                }
            },
            "/v1/embeddings": {
                "post": {
                    "summary": "Embed texts with the embedded model or an alias's upstreams.",
                    "operationId": "createEmbedding",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _EMBEDDING_REQUEST}},
                    },
                    "responses": {
                        "200": _json(any_object, "A list of embeddings, `model` the one used."),
                        **_errors(400, 401, 404, 429, 503),
                    },
                }
            },
            **other_paths,
            **_knowledge_paths(),
            **_managed_paths(),
            "/v1/models": {
                "get": {
                    "summary": "List model aliases.",
                    "operationId": "listModels",
                    "responses": {"200": _json(any_object, "The aliases.")},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness.",
                    "operationId": "healthz",
                    "responses": {"200": _json(any_object, "Alive.")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness.",
                    "description": "Body: `status`; `usable` upstreams and each alias's "
                    "routes or why none can answer; `backends` (shared backends' health), "
                    "`knowledge` (ingestion workers alive of configured, files waiting and "
                    "ingesting in this process, sweeper alive) and `degraded` (what of these "
                    "is not as it should be), none of which changes the status code.",
                    "operationId": "readyz",
                    "responses": {
                        "200": _json(any_object, "Ready."),
                        "503": _json(any_object, "No usable upstream, or draining."),
                    },
                }
            },
            "/v1/nobusy/usage": {
                "get": {
                    "summary": "Usage and spend grouped by key, model, upstream or day (admin).",
                    "operationId": "usageReport",
                    "parameters": [
                        {"name": "by", "in": "query", "schema": {"type": "string"}},
                        {"name": "since", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _json(any_object, "Groups and totals."), **_errors(400)},
                }
            },
            "/v1/nobusy/usage/series": {
                "get": {
                    "summary": "Daily requests, tokens, spend, errors, failovers by group (admin).",
                    "operationId": "usageSeries",
                    "parameters": [
                        {"name": n, "in": "query", "schema": {"type": "string"}}
                        for n in ("from", "to", "by")
                    ],
                    "responses": {"200": _json(any_object, "Days and groups."), **_errors(400)},
                }
            },
            "/v1/nobusy/usage/export.csv": {
                "get": {
                    "summary": "The request rows of a date range as CSV, streamed (admin).",
                    "operationId": "usageExport",
                    "parameters": [
                        {"name": n, "in": "query", "schema": {"type": "string"}}
                        for n in ("from", "to", "key", "model", "status")
                    ],
                    "responses": {
                        "200": {"description": "CSV.", "content": {"text/csv": {}}},
                        **_errors(400),
                    },
                }
            },
            "/v1/nobusy/requests": {
                "get": {
                    "summary": "The request log, newest first, in keyset pages (admin).",
                    "operationId": "listRequests",
                    "parameters": [
                        {"name": n, "in": "query", "schema": {"type": "string"}}
                        for n in ("key", "model", "status", "since", "until", "limit", "cursor")
                    ],
                    "responses": {"200": _json(any_object, "A page of rows."), **_errors(400)},
                }
            },
            "/v1/nobusy/requests/{id}": {
                "get": {
                    "summary": "One request of the log with its audit events (admin).",
                    "operationId": "getRequest",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": _json(any_object, "The request."), **_errors(404)},
                }
            },
            "/console/session": {
                "get": {
                    "summary": "Whether this browser is signed in to the console.",
                    "operationId": "consoleSession",
                    "responses": {"200": _json(any_object, "The session's state.")},
                },
                "post": {
                    "summary": "Sign in: the admin key exchanged for a session cookie.",
                    "operationId": "consoleSignIn",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"admin_key": {"type": "string", "minLength": 1}},
                                    "required": ["admin_key"],
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(any_object, "Signed in; the cookie is set."),
                        **_errors(400, 401, 429),
                    },
                },
                "delete": {
                    "summary": "Sign out: the session ended on the server.",
                    "operationId": "consoleSignOut",
                    "responses": {"200": _json(any_object, "Signed out.")},
                },
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics.",
                    "operationId": "metrics",
                    "responses": {
                        "200": {"description": "Prometheus text.", "content": {"text/plain": {}}}
                    },
                }
            },
        },
        "components": {"schemas": components},
    }


async def openapi_json(request: Request) -> Response:
    """Serve the OpenAPI document."""
    return JSONResponse(openapi_spec())


routes: list[BaseRoute] = [Route("/openapi.json", openapi_json, methods=["GET"])]
