"""The Messages API with the official `anthropic` SDK: every fault, streaming and not.

The same `fault-*` aliases as the chat suite (tests/conftest.py): before the first token nobusy
fails over, after it nobusy continues the answer on the next route, and an Anthropic client
receives exactly the healthy answer, in Anthropic's events. The drills run against
`kind: openai` upstreams and again against `kind: anthropic` ones (`any_kind_url`).
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import orjson
import pytest

from nobusy.testing.fake_upstream import answer_text, reasoning_text
from tests.conftest import FAULTS

MESSAGES: list[Any] = [{"role": "user", "content": "Are you there?"}]
TOOLS: list[Any] = [
    {
        "name": "search",
        "description": "Search the web.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]

_CLIENTS: dict[str, anthropic.Anthropic] = {}


def client(base_url: str) -> anthropic.Anthropic:
    root = base_url.removesuffix("/v1")
    if root not in _CLIENTS:
        _CLIENTS[root] = anthropic.Anthropic(base_url=root, api_key="unused", max_retries=0)
    return _CLIENTS[root]


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Any:
    yield
    for sdk in _CLIENTS.values():
        sdk.close()
    _CLIENTS.clear()


def ask(base_url: str, model: str, stream: bool, **kwargs: Any) -> tuple[Any, Any]:
    """(the final Message, the HTTP headers) of one request, streamed or not."""
    sdk = client(base_url)
    kwargs = {"max_tokens": 256, "messages": MESSAGES, **kwargs}
    if not stream:
        raw = sdk.messages.with_raw_response.create(model=model, **kwargs)
        return raw.parse(), raw.headers
    with sdk.messages.stream(model=model, **kwargs) as events:
        text = "".join(events.text_stream)
        message = events.get_final_message()
        headers = events.response.headers
    assert text == "".join(b.text for b in message.content if b.type == "text")
    return message, headers


def texts(message: Any, kind: str = "text") -> str:
    return "".join(getattr(b, kind) for b in message.content if b.type == kind)


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize(
    "fault", sorted(set(FAULTS) - {"reasoning-cut", "tool-call-cut", "reasoning-then-content-cut"})
)
def test_text_is_exactly_the_healthy_answer(any_kind_url: str, fault: str, stream: bool) -> None:
    message, headers = ask(any_kind_url, f"fault-{fault}", stream)
    assert texts(message) == answer_text(MESSAGES)
    assert [b.type for b in message.content] == ["text"]
    assert message.stop_reason == "end_turn"
    assert message.model == f"fault-{fault}"
    assert message.id.startswith("msg_")
    assert message.usage.output_tokens >= 12
    if fault.startswith(("drop1", "drop5", "garbage", "error", "slow")):
        # Continued after the first token: the answer came from the faulty route, then the next.
        assert headers["x-nobusy-upstream"] == "fake/" + FAULTS[fault][0].split("/", 1)[1]
    else:
        assert headers["x-nobusy-upstream"] in ("backup", "vllm/ok")


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("fault", ["reasoning-cut", "reasoning-then-content-cut"])
def test_thinking_blocks_survive_a_cut(any_kind_url: str, fault: str, stream: bool) -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    message, _ = ask(any_kind_url, f"fault-{fault}", stream, thinking=thinking, max_tokens=4096)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert texts(message, "thinking") == reasoning_text(MESSAGES)
    assert texts(message) == answer_text(MESSAGES)


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_tool_use_round_trip(any_kind_url: str, stream: bool) -> None:
    message, _ = ask(
        any_kind_url, "fault-tool-call-cut", stream, tools=TOOLS, tool_choice={"type": "auto"}
    )
    assert message.stop_reason == "tool_use"
    (call,) = message.content
    assert call.type == "tool_use" and call.name == "search"
    assert call.input == {"query": "Are you there?"}  # complete JSON despite the cut
    follow_up = [
        *MESSAGES,
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "It is sunny."},
                {"type": "text", "text": "Are you there?"},
            ],
        },
    ]
    answer, _ = ask(any_kind_url, "ok", stream, tools=TOOLS, messages=follow_up)
    assert answer.stop_reason == "end_turn"
    assert texts(answer) == answer_text(MESSAGES)


def test_the_stream_is_anthropics_exact_event_sequence(any_kind_url: str) -> None:
    body = {"model": "fault-drop5", "max_tokens": 64, "stream": True, "messages": MESSAGES}
    url = any_kind_url + "/messages?beta=true"
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "unused"}
    with httpx.stream("POST", url, json=body, headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [orjson.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in data] == names
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert data[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert data[-2]["usage"]["output_tokens"] >= 12
    # The continuation is announced in an SSE comment, which the SDKs skip.
    assert any(line.startswith(": ") and "continu" in line for line in lines)


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_every_route_down_is_529_overloaded(any_kind_url: str, stream: bool) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(any_kind_url, "alldown", stream)
    assert caught.value.status_code == 529
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_count_tokens(base_url: str) -> None:
    counted = client(base_url).messages.count_tokens(
        model="ok", messages=MESSAGES, system="Be brief.", tools=TOOLS
    )
    assert counted.input_tokens > 0


def post(base_url: str, body: Any, path: str = "/messages") -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    return httpx.post(base_url + path, content=content, headers=headers)


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert body["error"]["type"] == kind
    assert "Traceback" not in response.text
    message: str = body["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": "ok", "messages": MESSAGES}, "max_tokens"),
        (
            {
                "model": "ok",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}],
            },
            "messages.0.content.0: unexpected content block type 'video'",
        ),
        (
            {"model": "ok", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]},
            "role",
        ),
        ({"model": "ok", "max_tokens": 10, "messages": []}, "messages"),
        (
            {"model": "ok", "max_tokens": 10, "messages": MESSAGES, "temperature": 1.5},
            "temperature",
        ),
        (
            {"model": "ok", "max_tokens": 10, "messages": MESSAGES, "tools": [{"name": "x"}]},
            "tools.0.input_schema",
        ),
        (b"{not json", "not valid JSON"),
    ],
)
def test_bad_bodies_are_400_in_anthropics_shape(base_url: str, body: Any, says: str) -> None:
    message = anthropic_error(post(base_url, body), 400, "invalid_request_error")
    assert says in message


def test_bad_body_through_the_sdk_is_bad_request(base_url: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(base_url).messages.create(
            model="ok",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "video"}]}],  # type: ignore[list-item]
        )
    assert "unexpected content block type 'video'" in caught.value.message


def test_unknown_model_and_path_are_404_not_found_error(base_url: str) -> None:
    body = {"model": "nope", "max_tokens": 10, "messages": MESSAGES}
    anthropic_error(post(base_url, body), 404, "not_found_error")
    anthropic_error(post(base_url, body, "/messages/nope"), 404, "not_found_error")
    with pytest.raises(anthropic.NotFoundError):
        client(base_url).messages.create(model="nope", max_tokens=10, messages=MESSAGES)


def test_chat_errors_keep_openais_shape(base_url: str) -> None:
    response = post(base_url, {"model": "nope", "messages": MESSAGES}, "/chat/completions")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_a_stream_that_cannot_be_continued_ends_in_an_error_event(base_url: str) -> None:
    # One route that drops mid-answer and nowhere to continue: headers are gone, so the
    # stream ends with Anthropic's `error` event, which the SDK raises.
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(base_url, "drop", True)
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert "Traceback" not in str(caught.value.body)


def test_a_wrong_method_is_405_in_anthropics_shape(base_url: str) -> None:
    anthropic_error(httpx.get(base_url + "/messages"), 405, "invalid_request_error")
