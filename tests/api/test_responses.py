"""The Responses API with the official `openai` SDK: every fault, streaming and not.

The same `fault-*` aliases as the chat suite (tests/conftest.py): a client of
`responses.create` receives exactly the healthy answer, with one `response.created` and no
text twice, whatever the first route does.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import orjson
import pytest

from nobusy.testing.fake_upstream import answer_text, reasoning_text
from tests.conftest import FAULTS, openai_client

INPUT = "Are you there?"
MESSAGES: list[Any] = [{"role": "user", "content": INPUT}]
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


def ask(base_url: str, model: str, stream: bool, **kwargs: Any) -> tuple[Any, list[str]]:
    """(the final Response, the event types seen) of one request, streamed or not."""
    client = openai_client(base_url)
    kwargs = {"input": INPUT, **kwargs}
    if not stream:
        return client.responses.create(model=model, **kwargs), []
    events = list(client.responses.create(model=model, stream=True, **kwargs))
    types = [event.type for event in events]
    assert types.count("response.created") == 1
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete"), types
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.response.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return final.response, types


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize(
    "fault", sorted(set(FAULTS) - {"reasoning-cut", "tool-call-cut", "reasoning-then-content-cut"})
)
def test_text_is_exactly_the_healthy_answer(base_url: str, fault: str, stream: bool) -> None:
    response, _ = ask(base_url, f"fault-{fault}", stream)
    assert response.output_text == answer_text(MESSAGES)
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["message"]
    assert response.id.startswith("resp_")
    assert response.model == f"fault-{fault}"
    assert response.usage is not None and response.usage.output_tokens >= 12


def test_the_stream_is_the_documented_event_sequence(base_url: str) -> None:
    _, types = ask(base_url, "fault-drop5", True)
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-5:] == [
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("fault", ["reasoning-cut", "reasoning-then-content-cut"])
def test_reasoning_survives_a_cut(base_url: str, fault: str, stream: bool) -> None:
    response, _ = ask(base_url, f"fault-{fault}", stream, reasoning={"effort": "low"})
    reasoning, message = response.output
    assert reasoning.type == "reasoning"
    assert "".join(c.text for c in reasoning.content) == reasoning_text(MESSAGES)
    assert response.output_text == answer_text(MESSAGES)


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_function_tool_round_trip(base_url: str, stream: bool) -> None:
    response, types = ask(base_url, "fault-tool-call-cut", stream, tools=TOOLS)
    (call,) = response.output
    assert call.type == "function_call" and call.name == "search"
    assert json.loads(call.arguments) == {"query": INPUT}  # complete JSON despite the cut
    if stream:
        assert "response.function_call_arguments.delta" in types
        assert "response.function_call_arguments.done" in types
    follow_up = [
        {"role": "user", "content": INPUT},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "It is sunny."},
        {"role": "user", "content": [{"type": "input_text", "text": INPUT}]},
    ]
    answer, _ = ask(base_url, "ok", stream, tools=TOOLS, input=follow_up, instructions="Be brief.")
    assert answer.output_text == answer_text(MESSAGES)


def test_a_stream_that_cannot_be_continued_ends_failed(base_url: str) -> None:
    client = openai_client(base_url)
    events = list(client.responses.create(model="drop", input=INPUT, stream=True))
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-1].response.status == "failed"


def test_every_route_down_is_503_in_openais_shape(base_url: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client(base_url).responses.create(model="alldown", input=INPUT)
    assert caught.value.status_code == 503
    assert caught.value.code == "all_upstreams_failed"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "ok"}, 400, "input"),
        ({"model": "ok", "input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role"),
        ({"model": "ok", "input": [{"type": "computer_call"}]}, 400, "input[0].type"),
        ({"model": "ok", "input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
        (
            {"model": "ok", "input": "x", "previous_response_id": "resp_1"},
            404,
            "previous_response_id",
        ),
        ({"model": "nope", "input": "x"}, 404, None),
    ],
)
def test_bad_bodies_say_what_to_fix(
    base_url: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = httpx.post(
        base_url + "/responses",
        content=orjson.dumps(body),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if param is not None:
        assert error["param"] == param
    assert error["message"] and "Traceback" not in response.text


def test_previous_response_id_continues_the_conversation(
    base_url: str, fake_stats: httpx.Client
) -> None:
    client = openai_client(base_url)
    first = client.responses.create(model="ok", input=INPUT, instructions="Be brief.")
    second = client.responses.create(model="ok", input="And now?", previous_response_id=first.id)
    sent = fake_stats.get("/_fake/last").json()["messages"]
    # The first turn's instructions are not carried over, its conversation is.
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert (sent[0]["content"], sent[1]["content"]) == (INPUT, first.output_text)
    assert second.previous_response_id == first.id
    assert second.output_text == answer_text([{"role": "user", "content": "And now?"}])
    events = list(
        client.responses.create(
            model="ok", input="Once more?", previous_response_id=second.id, stream=True
        )
    )
    third = events[-1].response
    assert len(fake_stats.get("/_fake/last").json()["messages"]) == 5
    assert client.responses.retrieve(third.id).output_text == third.output_text
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="ok", input="x", previous_response_id=second.id)


def test_store_false_keeps_nothing(base_url: str) -> None:
    client = openai_client(base_url)
    response = client.responses.create(model="ok", input=INPUT, store=False)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(response.id)
    assert caught.value.code == "not_found"
    assert httpx.delete(base_url + "/responses/" + response.id).status_code == 404
