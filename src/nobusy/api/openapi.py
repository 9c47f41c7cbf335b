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
            **other_paths,
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
                    "operationId": "readyz",
                    "responses": {
                        "200": _json(any_object, "Ready."),
                        "503": _json(any_object, "No usable upstream."),
                    },
                }
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
