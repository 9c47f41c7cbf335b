"""The Anthropic adapter in-process: a Messages body into the chat body, chunks into events,
and nobusy's errors into Anthropic's shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from nobusy import errors
from nobusy.protocols.anthropic_events import MessagesEvents, render_message, stop_reason
from nobusy.protocols.anthropic_messages import count_tokens, parse_messages_request
from nobusy.protocols.errors import anthropic_error, error_for
from nobusy.schema import ChatRequest
from nobusy.store.usage import UsageRecord


def parse(**body: Any) -> dict[str, Any]:
    request = {"model": "m", "max_tokens": 100, **body}
    return parse_messages_request(orjson.dumps(request))[1]


def test_a_conversation_with_tools_translates_to_chat() -> None:
    image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0"}
    body = parse(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {
                "role": "user",
                "content": [{"type": "image", "source": image}, {"type": "text", "text": "What?"}],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Let me look.", "signature": "s"},
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": "x"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Thanks."},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "A cat."}],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": "boom",
                        "is_error": True,
                    },
                ],
            },
        ],
        tools=[{"name": "look", "description": "Look.", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "look", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.5,
        top_k=5,
        metadata={"user_id": "u1"},
        stream=True,
    )
    assert body["messages"] == [
        {"role": "system", "content": "Be brief.\n\nBe kind."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0"}},
                {"type": "text", "text": "What?"},
            ],
        },
        {
            "role": "assistant",
            "content": "Looking.",
            "reasoning_content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "look", "arguments": '{"q":"x"}'},
                }
            ],
        },
        # Tool results first: they answer the assistant's calls, as OpenAI requires.
        {"role": "tool", "tool_call_id": "toolu_1", "content": "A cat."},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
        {"role": "user", "content": "Thanks."},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "look", "parameters": {"type": "object"}, "description": "Look."},
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "look"}}
    assert body["parallel_tool_calls"] is False
    assert body["stop"] == ["END"]
    assert (body["temperature"], body["top_k"], body["user"]) == (0.5, 5, "u1")
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")],
)
def test_tool_choice(choice: dict[str, Any], expected: str) -> None:
    body = parse(messages=[{"role": "user", "content": "hi"}], tool_choice=choice)
    assert body["tool_choice"] == expected


@pytest.mark.parametrize(("budget", "effort"), [(1024, "low"), (8000, "medium"), (20000, "high")])
def test_thinking_budget_becomes_reasoning_effort(budget: int, effort: str) -> None:
    thinking = {"type": "enabled", "budget_tokens": budget}
    body = parse(messages=[{"role": "user", "content": "hi"}], thinking=thinking)
    assert body["reasoning_effort"] == effort


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": None},
            "max_tokens: Field required",
        ),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "image"}]}]},
            "messages.0.content.0",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "tool_use_id"),
        (
            {
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "server tools",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "tool_choice": {"type": "tool"}},
            "tool_choice",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "thinking": {"type": "enabled"}},
            "budget_tokens",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "system": [{"type": "image"}]},
            "system.0",
        ),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ],
)
def test_bad_bodies_say_what_to_fix(body: dict[str, Any], says: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        parse(**body)
    assert says in caught.value.message


def test_count_tokens_needs_no_max_tokens() -> None:
    model, tokens = count_tokens(
        b'{"model": "m", "messages": [{"role": "user", "content": "hello"}]}'
    )
    assert model == "m" and tokens > 0


def chat(**body: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=[], **body)


@pytest.mark.parametrize(
    ("finish", "matched", "expected"),
    [
        ("stop", None, ("end_turn", None)),
        ("length", None, ("max_tokens", None)),
        ("tool_calls", None, ("tool_use", None)),
        ("content_filter", None, ("refusal", None)),
        ("stop", "END", ("stop_sequence", "END")),
        ("stop", 128001, ("end_turn", None)),  # vLLM names a stop token by its id
        (None, None, ("end_turn", None)),
    ],
)
def test_stop_reason(finish: str | None, matched: Any, expected: tuple[str, str | None]) -> None:
    assert (
        stop_reason(finish, matched if isinstance(matched, str) else None, chat(stop=["END"]))
        == expected
    )


def events(parts: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in parts.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        out.append((name.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return out


def delta(**fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


def test_chunks_become_blocks_in_order() -> None:
    record = UsageRecord(request_id="r1", alias="m", stream=True)
    encoder = MessagesEvents(chat(stop=["END"]), record)
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    stream = encoder.start()
    for chunk in (
        delta(role="assistant", content=""),
        delta(reasoning_content="Hmm."),
        delta(content="Hi"),
        delta(content="!"),
        delta(tool_calls=[call]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}]),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}},
    ):
        stream += encoder.chunk(chunk)
    record.prompt_tokens, record.completion_tokens = 7, 5
    stream += encoder.end()
    seen = events(stream)
    assert [(name, data.get("index")) for name, data in seen] == [
        ("message_start", None),
        ("ping", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert seen[0][1]["message"]["id"] == "msg_r1"
    assert seen[3][1]["delta"] == {"type": "thinking_delta", "thinking": "Hmm."}
    assert seen[9][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "f",
        "input": {},
    }
    assert seen[10][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a":'}
    assert seen[13][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert seen[13][1]["usage"] == {"input_tokens": 7, "output_tokens": 5}


def test_a_whole_answer_becomes_a_message() -> None:
    completion = {
        "id": "chatcmpl-r2",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Done", "reasoning_content": "Think"},
                "finish_reason": "stop",
                "stop_reason": "END",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    message = render_message(completion, chat(stop=["END"]))
    assert message["id"] == "msg_r2"
    assert message["content"] == [
        {"type": "thinking", "thinking": "Think", "signature": ""},
        {"type": "text", "text": "Done"},
    ]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    assert message["usage"] == {"input_tokens": 3, "output_tokens": 2}


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (errors.InvalidRequest("x"), 400, "invalid_request_error"),
        (errors.ContentFiltered("x"), 400, "invalid_request_error"),
        (errors.UpstreamRejectedRequest("x", upstream="u"), 400, "invalid_request_error"),
        (errors.InvalidApiKey("x"), 401, "authentication_error"),
        (errors.ModelNotAllowed("x"), 403, "permission_error"),
        (errors.ModelNotFound("x"), 404, "not_found_error"),
        (errors.RequestTimeout("x"), 408, "invalid_request_error"),
        (errors.RequestTooLarge("x"), 413, "request_too_large"),
        (errors.RateLimited("x", retry_after=1), 429, "rate_limit_error"),
        (errors.QuotaExhausted("x"), 429, "rate_limit_error"),
        (errors.QueueFull(5, 1, 3), 429, "rate_limit_error"),
        (errors.AllUpstreamsFailed("m", []), 529, "overloaded_error"),
        (errors.Draining("x"), 529, "overloaded_error"),
        (errors.StorageUnavailable("x"), 503, "api_error"),
        (errors.NobusyError("x"), 500, "api_error"),
    ],
)
def test_errors_map_once_from_the_tree(error: errors.NobusyError, status: int, kind: str) -> None:
    got_status, body = anthropic_error(error.status_code, error.body())
    assert (got_status, body["error"]["type"]) == (status, kind)
    assert body == {"type": "error", "error": {"type": kind, "message": error.public_message}}
    assert error_for("/v1/messages", error.status_code, error.body()) == (got_status, body)
    assert error_for("/v1/chat/completions", error.status_code, error.body()) == (
        error.status_code,
        error.body(),
    )


def test_an_error_after_the_headers_is_an_error_event() -> None:
    encoder = MessagesEvents(chat(), UsageRecord(request_id="r", alias="m", stream=True))
    error = errors.AllUpstreamsFailed("m", [])
    ((name, data),) = events(encoder.error(error.status_code, error.body()))
    assert name == "error"
    assert data == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": error.public_message},
    }
