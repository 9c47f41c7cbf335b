"""The OpenAPI paths of the client protocols beside chat: Anthropic's Messages API, OpenAI's
Responses API and legacy completions, with their request and answer schemas.

The completions request is generated from the type that parses it
(``protocols.openai_completions.CompletionRequest``); the Messages and Responses bodies are
written out here as their parsers (``protocols.anthropic_messages``,
``protocols.openai_responses``) read them, since those parsers check in steps that a single
type does not express. ``api.openapi`` merges these into the one document.
"""

from __future__ import annotations

from typing import Any

import msgspec

from nobusy.protocols.openai_completions import CompletionRequest

__all__ = ["protocol_paths"]

_STRING = {"type": "string"}
_INT = {"type": "integer"}
_OBJECT = {"type": "object"}
_SSE = {"text/event-stream": {"schema": _STRING}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _number(low: float, high: float) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _answer(description: str, name: str, stream: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(name)}}
    if stream:
        content.update(_SSE)
    return {"description": description, "content": content}


def _errors(error: str, *statuses: int) -> dict[str, Any]:
    what = "Anthropic's shape" if error == "AnthropicError" else "OpenAI's shape"
    return {
        str(s): {
            "description": f"An error in {what}.",
            "content": {"application/json": {"schema": _ref(error)}},
        }
        for s in statuses
    }


_CONTENT_BLOCK = {
    "type": "object",
    "description": "A content block: text, image, tool_use, tool_result or thinking.",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["text", "image", "tool_use", "tool_result", "thinking", "document"]},
        "text": _STRING,
        "source": _OBJECT,
        "id": _STRING,
        "name": _STRING,
        "input": _OBJECT,
        "tool_use_id": _STRING,
        "content": {"anyOf": [_STRING, _array(_OBJECT)]},
        "is_error": {"type": "boolean"},
        "thinking": _STRING,
        "signature": _STRING,
    },
}
_MESSAGES_FIELDS: dict[str, Any] = {
    "model": _STRING,
    "messages": _array(
        {
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "role": {"enum": ["user", "assistant"]},
                "content": {"anyOf": [_STRING, _array(_CONTENT_BLOCK)]},
            },
        }
    ),
    "system": _nullable({"anyOf": [_STRING, _array(_OBJECT)]}),
    "tools": _nullable(
        _array(
            {
                "type": "object",
                "required": ["name"],
                "properties": {"name": _STRING, "description": _STRING, "input_schema": _OBJECT},
            }
        )
    ),
    "tool_choice": _nullable(
        {"type": "object", "properties": {"type": {"enum": ["auto", "any", "tool", "none"]}}}
    ),
    "thinking": _nullable(
        {
            "type": "object",
            "properties": {"type": {"enum": ["enabled", "disabled"]}, "budget_tokens": _INT},
        }
    ),
}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT},
}

SCHEMAS: dict[str, Any] = {
    "AnthropicError": {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": _STRING, "message": _STRING},
            },
        },
    },
    "MessagesRequest": {
        "type": "object",
        "required": ["model", "messages", "max_tokens"],
        "properties": {
            **_MESSAGES_FIELDS,
            "max_tokens": {"type": "integer", "minimum": 1},
            "stream": {"type": "boolean"},
            "stop_sequences": _nullable(_array(_STRING)),
            "temperature": _nullable(_number(0, 1)),
            "top_p": _nullable(_number(0, 1)),
            "top_k": _nullable(_INT),
            "metadata": _nullable({"type": "object", "properties": {"user_id": _STRING}}),
        },
    },
    "CountTokensRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": _MESSAGES_FIELDS,
    },
    "AnthropicMessage": {
        "type": "object",
        "required": ["id", "type", "role", "content", "model", "stop_reason", "usage"],
        "properties": {
            "id": _STRING,
            "type": {"const": "message"},
            "role": {"const": "assistant"},
            "content": _array(_CONTENT_BLOCK),
            "model": _STRING,
            "stop_reason": _nullable(
                {"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]}
            ),
            "stop_sequence": _nullable(_STRING),
            "usage": {
                "type": "object",
                "required": ["input_tokens", "output_tokens"],
                "properties": {"input_tokens": _INT, "output_tokens": _INT},
            },
        },
    },
    "ResponsesRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": _STRING,
            "input": {
                "anyOf": [
                    _STRING,
                    _array(
                        {
                            "type": "object",
                            "description": "A message (input_text, output_text, input_image "
                            "parts), a function_call or a function_call_output item.",
                            "properties": {
                                "type": _STRING,
                                "role": {"enum": ["user", "system", "developer", "assistant"]},
                                "content": {"anyOf": [_STRING, _array(_OBJECT)]},
                                "call_id": _STRING,
                                "name": _STRING,
                                "arguments": _STRING,
                                "output": _STRING,
                            },
                        }
                    ),
                ]
            },
            "instructions": _nullable(_STRING),
            "tools": _nullable(_array(_OBJECT)),
            "tool_choice": _nullable({"anyOf": [_STRING, _OBJECT]}),
            "parallel_tool_calls": _nullable({"type": "boolean"}),
            "stream": {"type": "boolean"},
            "max_output_tokens": _nullable(_INT),
            "temperature": _nullable(_number(0, 2)),
            "top_p": _nullable(_number(0, 1)),
            "previous_response_id": _nullable(_STRING),
            "reasoning": _nullable(_OBJECT),
            "text": _nullable(_OBJECT),
            "user": _nullable(_STRING),
            "store": {"type": "boolean"},
        },
    },
    "Response": {
        "type": "object",
        "required": ["id", "object", "created_at", "status", "model", "output", "usage"],
        "properties": {
            "id": _STRING,
            "object": {"const": "response"},
            "created_at": _INT,
            "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
            "model": _STRING,
            "output": _array(
                {
                    "type": "object",
                    "required": ["type", "id"],
                    "properties": {
                        "type": {"enum": ["message", "function_call", "reasoning"]},
                        "id": _STRING,
                    },
                }
            ),
            "previous_response_id": _nullable(_STRING),
            "usage": {
                "type": "object",
                "properties": {"input_tokens": _INT, "output_tokens": _INT, "total_tokens": _INT},
            },
        },
    },
    "ResponseDeleted": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {
            "id": _STRING,
            "object": {"const": "response.deleted"},
            "deleted": {"const": True},
        },
    },
    "TextCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": _STRING,
            "object": {"const": "text_completion"},
            "created": _INT,
            "model": _STRING,
            "choices": _array(
                {
                    "type": "object",
                    "required": ["text", "index", "finish_reason"],
                    "properties": {
                        "text": _STRING,
                        "index": _INT,
                        "logprobs": {"type": "null"},
                        "finish_reason": _nullable({"enum": ["stop", "length", "content_filter"]}),
                    },
                }
            ),
            "usage": _USAGE,
        },
    },
}

_RESPONSE_ID = [
    {"name": "response_id", "in": "path", "required": True, "schema": _STRING},
]


def protocol_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, component schemas) of ``/v1/messages``, ``/v1/messages/count_tokens``,
    ``/v1/responses`` (and ``/{response_id}``) and ``/v1/completions``."""
    # The request's schema lands in the components under its own name, CompletionRequest.
    _, components = msgspec.json.schema_components(
        [CompletionRequest], ref_template="#/components/schemas/{name}"
    )
    components = {**components, **SCHEMAS}
    paths = {
        "/v1/messages": {
            "post": {
                "summary": "Create a message (Anthropic's Messages API; `stream: true` for "
                "its events).",
                "operationId": "createMessage",
                "requestBody": _body("MessagesRequest"),
                "responses": {
                    "200": _answer("A message, or Anthropic's event stream.", "AnthropicMessage"),
                    **_errors("AnthropicError", 400, 404, 413, 429, 529),
                },
            }
        },
        "/v1/messages/count_tokens": {
            "post": {
                "summary": "Estimate the input tokens of a Messages body.",
                "operationId": "countMessageTokens",
                "requestBody": _body("CountTokensRequest"),
                "responses": {
                    "200": {
                        "description": "The estimate.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["input_tokens"],
                                    "properties": {"input_tokens": _INT},
                                }
                            }
                        },
                    },
                    **_errors("AnthropicError", 400, 404),
                },
            }
        },
        "/v1/responses": {
            "post": {
                "summary": "Create a response (OpenAI's Responses API; `stream: true` for "
                "its semantic events).",
                "operationId": "createResponse",
                "requestBody": _body("ResponsesRequest"),
                "responses": {
                    "200": _answer("A response, or its event stream.", "Response"),
                    **_errors("Error", 400, 404, 413, 429, 502, 503, 504),
                },
            }
        },
        "/v1/responses/{response_id}": {
            "get": {
                "summary": "A kept response (the same key's, within responses_ttl).",
                "operationId": "getResponse",
                "parameters": _RESPONSE_ID,
                "responses": {
                    "200": _answer("The response as it was sent.", "Response", stream=False),
                    **_errors("Error", 404),
                },
            },
            "delete": {
                "summary": "Forget a kept response and its conversation.",
                "operationId": "deleteResponse",
                "parameters": _RESPONSE_ID,
                "responses": {
                    "200": _answer("Deleted.", "ResponseDeleted", stream=False),
                    **_errors("Error", 404),
                },
            },
        },
        "/v1/completions": {
            "post": {
                "summary": "Complete a prompt, or fill in the middle with `suffix` (OpenAI's "
                "legacy completions; `stream: true` for chunks).",
                "operationId": "createCompletion",
                "requestBody": _body("CompletionRequest"),
                "responses": {
                    "200": _answer(
                        "A text_completion, or an SSE stream of them.", "TextCompletion"
                    ),
                    **_errors("Error", 400, 404, 408, 413, 429, 502, 503, 504),
                },
            }
        },
    }
    return paths, components
