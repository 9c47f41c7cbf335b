"""The Responses adapter in-process: items into the chat body, chunks into semantic events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from nobusy import errors
from nobusy.protocols.openai_responses import parse_responses_request
from nobusy.protocols.openai_responses_events import ResponsesEvents, render_response
from nobusy.schema import ChatRequest
from nobusy.store.usage import UsageRecord


def parse(**body: Any) -> dict[str, Any]:
    return parse_responses_request(orjson.dumps({"model": "m", **body})).body


def test_items_translate_to_chat_messages() -> None:
    body = parse(
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Use tools."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Look: "},
                    {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"},
                ],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "Calling."}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ],
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
        tool_choice={"type": "function", "name": "f"},
        max_output_tokens=50,
        reasoning={"effort": "high"},
        text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
        stream=True,
    )
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use tools."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look: "},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Calling.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}, "strict": True},
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert (body["max_tokens"], body["reasoning_effort"]) == (50, "high")
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}},
    }
    assert body["stream_options"] == {"include_usage": True}


def test_previous_response_id_is_unknown() -> None:
    with pytest.raises(errors.NotFound) as caught:
        parse(input="hi", previous_response_id="resp_9")
    assert "resp_9" in caught.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": 5}, "input"),
    ],
)
def test_bad_bodies_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        parse(**body)
    assert caught.value.param == param


def events(stream: bytes) -> list[dict[str, Any]]:
    out = []
    for block in stream.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        event = orjson.loads(data.removeprefix("data: "))
        assert event["type"] == name.removeprefix("event: ")
        out.append(event)
    return out


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


def test_chunks_become_items_and_a_completed_response() -> None:
    record = UsageRecord(request_id="r1", alias="m", stream=True)
    encoder = ResponsesEvents(ChatRequest(model="m", messages=[]), record)
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
    stream = encoder.start()
    for chunk in (
        delta(reasoning_content="Hmm."),
        delta(content="Hi"),
        delta(tool_calls=[call]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]),
        delta("tool_calls"),
    ):
        stream += encoder.chunk(chunk)
    record.prompt_tokens, record.completion_tokens = 4, 3
    stream += encoder.end()
    seen = events(stream)
    assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
    assert [e["type"] for e in seen] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = seen[-1]["response"]
    assert final["id"] == "resp_r1" and final["status"] == "completed"
    assert [item["type"] for item in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["output"][2]["call_id"] == "call_1"
    assert final["usage"]["total_tokens"] == 7


def test_a_cut_at_max_tokens_is_incomplete() -> None:
    completion = {
        "id": "chatcmpl-r2",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Par"},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    response = render_response(completion, ChatRequest(model="m", messages=[]))
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["content"][0]["text"] == "Par"
