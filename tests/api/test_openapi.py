"""The OpenAPI document lists every public route with its methods, and each client protocol's
request and answer schemas."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from nobusy.api import chat, completions, messages, models, ops, responses_api
from nobusy.api.openapi import openapi_spec

PUBLIC = [*chat.routes, *messages.routes, *responses_api.routes, *completions.routes]
PUBLIC += [*models.routes, *ops.routes]


@pytest.mark.parametrize(
    "route", [r for r in PUBLIC if isinstance(r, Route)], ids=lambda r: f"{r.path}"
)
def test_every_public_route_is_documented(route: Route) -> None:
    documented = openapi_spec()["paths"].get(route.path)
    assert documented is not None, route.path
    for method in route.methods or ():
        if method != "HEAD":
            assert method.lower() in documented, (route.path, method)


@pytest.mark.parametrize(
    ("path", "request_schema", "answer"),
    [
        ("/v1/messages", "MessagesRequest", "AnthropicMessage"),
        ("/v1/responses", "ResponsesRequest", "Response"),
        ("/v1/completions", "CompletionRequest", "TextCompletion"),
    ],
)
def test_protocol_schemas_resolve(path: str, request_schema: str, answer: str) -> None:
    spec = openapi_spec()
    post = spec["paths"][path]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": f"#/components/schemas/{request_schema}"}
    ok = post["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": f"#/components/schemas/{answer}"}
    assert "text/event-stream" in ok
    schemas = spec["components"]["schemas"]
    assert schemas[request_schema]["required"]
    assert schemas[answer]["properties"]


def test_completion_request_schema_names_its_fields() -> None:
    fields = openapi_spec()["components"]["schemas"]["CompletionRequest"]["properties"]
    assert {"prompt", "suffix", "max_tokens", "stop", "stream", "echo"} <= set(fields)
    # Chat's message schema is not overwritten by another protocol's.
    assert "role" in openapi_spec()["components"]["schemas"]["Message"]["properties"]
