"""Every fault, streaming and not: the client receives exactly what the healthy path gives.

Each `fault-*` alias (tests/conftest.py) puts a faulty route before a healthy one; before the
first token nobusy fails over, after it nobusy continues the answer on the next route. The
drills run twice (`any_kind_url`): with `kind: openai` upstreams and with `kind: anthropic` ones,
which the fake upstream answers in the Messages API's format with the same faults.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from nobusy.testing.fake_upstream import answer_text, reasoning_text
from tests.conftest import FAULTS, Process, openai_client

MESSAGES: list[Any] = [{"role": "user", "content": "Are you there?"}]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


def client(base_url: str) -> openai.OpenAI:
    return openai_client(base_url)


def ask(base_url: str, model: str, stream: bool, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    """(the assembled answer, the raw response) for one request."""
    raw = client(base_url).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, stream=stream, **kwargs
    )
    result: Any = raw.parse()
    if not stream:
        message = result.choices[0].message
        calls = [
            {"name": c.function.name, "arguments": c.function.arguments}
            for c in message.tool_calls or ()
        ]
        answer = {
            "content": message.content or "",
            "reasoning": getattr(message, "reasoning_content", None) or "",
            "tools": calls,
            "finish": result.choices[0].finish_reason,
            "usage": result.usage,
        }
        return answer, raw
    content, reasoning, usage, finish = [], [], None, None
    calls: dict[int, dict[str, str]] = {}
    for chunk in result:
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        delta: Any = chunk.choices[0].delta
        content.append(delta.content or "")
        reasoning.append(getattr(delta, "reasoning_content", None) or "")
        for call in delta.tool_calls or ():
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            entry["name"] += (call.function and call.function.name) or ""
            entry["arguments"] += (call.function and call.function.arguments) or ""
        finish = chunk.choices[0].finish_reason or finish
    answer = {
        "content": "".join(content),
        "reasoning": "".join(reasoning),
        "tools": [calls[i] for i in sorted(calls)],
        "finish": finish,
        "usage": usage,
    }
    return answer, raw


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize(
    "fault", sorted(set(FAULTS) - {"reasoning-cut", "tool-call-cut", "reasoning-then-content-cut"})
)
def test_text_is_exactly_the_healthy_answer(any_kind_url: str, fault: str, stream: bool) -> None:
    answer, raw = ask(
        any_kind_url,
        f"fault-{fault}",
        stream,
        stream_options={"include_usage": True} if stream else None,
    )
    assert answer["content"] == answer_text(MESSAGES)
    assert answer["finish"] == "stop"
    assert answer["usage"] is not None and answer["usage"].completion_tokens >= 12
    if fault.startswith(("drop1", "drop5", "garbage", "error", "slow")):
        assert raw.headers["x-nobusy-upstream"] == "fake/" + FAULTS[fault][0].split("/", 1)[1]
    else:
        assert raw.headers["x-nobusy-upstream"] in ("backup", "vllm/ok")


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("fault", ["reasoning-cut", "reasoning-then-content-cut"])
def test_reasoning_cut_is_seamless(any_kind_url: str, fault: str, stream: bool) -> None:
    answer, _ = ask(any_kind_url, f"fault-{fault}", stream)
    assert answer["reasoning"] == reasoning_text(MESSAGES)
    assert answer["content"] == answer_text(MESSAGES)


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_tool_call_cut_never_shows_broken_json(any_kind_url: str, stream: bool) -> None:
    answer, _ = ask(any_kind_url, "fault-tool-call-cut", stream, tools=TOOLS)
    assert answer["finish"] == "tool_calls"
    assert len(answer["tools"]) == 1
    assert answer["tools"][0]["name"] == "search"
    assert json.loads(answer["tools"][0]["arguments"]) == {"query": "Are you there?"}


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_tool_call_round_trip(any_kind_url: str, stream: bool) -> None:
    # The call (cut once on the way), then its result sent back: with kind anthropic this
    # travels as tool_use and tool_result blocks, and the answer is the healthy one.
    answer, _ = ask(any_kind_url, "fault-tool-call-cut", stream, tools=TOOLS)
    (call,) = answer["tools"]
    arguments = json.loads(call["arguments"])
    follow_up = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": call},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": f"found {arguments['query']}"},
    ]
    raw = client(any_kind_url).chat.completions.create(
        model="ok", messages=follow_up, tools=TOOLS, stream=False
    )
    assert raw.choices[0].message.content == answer_text(MESSAGES)


def test_mid_stream_continuation_is_announced_in_an_sse_comment(any_kind_url: str) -> None:
    body = {"model": "fault-drop5", "stream": True, "messages": MESSAGES}
    with httpx.stream("POST", f"{any_kind_url}/chat/completions", json=body) as response:
        lines = list(response.iter_lines())
    notes = [line for line in lines if line.startswith(": nobusy")]
    assert len(notes) == 1 and "continuing on backup" in notes[0]
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"


def test_non_streaming_continuation_is_named_in_a_header(any_kind_url: str) -> None:
    _, raw = ask(any_kind_url, "fault-drop5", stream=False)
    assert "continuing on backup" in raw.headers["x-nobusy-failover"]


@pytest.mark.parametrize(
    ("fault", "route", "how"),
    [
        ("drop5", "backup", "with {label} as configured, not checked"),
        ("drop5-auto", "auto", "from the cut with {label}, checked on this upstream"),
        ("drop5-wordy", "wordy", "asked in words to continue; the text may repeat or differ"),
    ],
)
def test_continuation_note_says_only_what_is_known(
    any_kind_url: str, fault: str, route: str, how: str, request: pytest.FixtureRequest
) -> None:
    # The Messages API continues a trailing assistant turn (prefill): the note names it so.
    kind = request.node.callspec.params["any_kind_url"]
    how = how.format(label="assistant prefill" if kind == "anthropic" else "prefix completion")
    # `auto` probes the upstream once: the fake behind `auto` honours prefix completion, the
    # one behind `wordy` honours neither native mode (it restarts), so nobusy asks in words.
    answer, raw = ask(any_kind_url, f"fault-{fault}", stream=False)
    assert answer["content"] == answer_text(MESSAGES)
    assert f"; continuing on {route}: {how}" in raw.headers["x-nobusy-failover"]
    assert "without repeating" not in raw.headers["x-nobusy-failover"]


def test_429_marks_upstream_unavailable_until_retry_after(any_kind_url: str) -> None:
    ask(any_kind_url, "fault-http429", stream=False)
    upstreams = {u["name"]: u for u in httpx.get(any_kind_url + "/nobusy/upstreams").json()["data"]}
    assert upstreams["limited"]["state"] == "open"
    assert 5 < upstreams["limited"]["retry_in"] <= 7
    # The next request skips it without trying: the fake sees one call, to the backup.
    answer, raw = ask(any_kind_url, "fault-http429", stream=False)
    assert raw.headers["x-nobusy-upstream"] == "backup"


def test_401_opens_the_circuit(any_kind_url: str) -> None:
    ask(any_kind_url, "fault-http401", stream=True)
    upstreams = {u["name"]: u for u in httpx.get(any_kind_url + "/nobusy/upstreams").json()["data"]}
    assert upstreams["badkey"]["state"] == "open"
    assert "401" in upstreams["badkey"]["last_error"]


def test_request_error_from_upstream_is_returned_not_retried(
    any_kind_url: str, fake_stats: httpx.Client
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(any_kind_url).chat.completions.create(model="rejected", messages=MESSAGES)
    assert "temperature" in info.value.message
    assert fake_stats.get("/_fake/stats").json()["requests"] == 1  # the backup was not tried


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_all_down_is_503_naming_each_upstream(any_kind_url: str, stream: bool) -> None:
    response = httpx.post(
        f"{any_kind_url}/chat/completions",
        json={"model": "alldown", "messages": MESSAGES, "stream": stream},
    )
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "service_unavailable"
    assert "refused: cannot connect" in error["message"]
    assert "busy: HTTP 503" in error["message"]
    assert response.headers["retry-after"] == "1"  # refused may be back at once
    assert "sk-test-secret" not in response.text


def test_all_paused_retry_after_is_the_earliest_return(any_kind_url: str) -> None:
    response = httpx.post(
        f"{any_kind_url}/chat/completions", json={"model": "allpaused", "messages": MESSAGES}
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"  # busy says 30, limited says 7


def test_admin_endpoint_shows_every_upstream(gateway: Process, base_url: str) -> None:
    data = httpx.get(base_url + "/nobusy/upstreams").json()["data"]
    names = {u["name"] for u in data}
    assert {"fake", "backup", "refused", "local"} <= names
    # `probed` is excluded: its background probe may already have ejected it again.
    assert all(u["state"] == "closed" for u in data if u["name"] != "probed")


def test_hedge_races_a_slow_first_route_and_cancels_the_loser(
    gateway: Process, base_url: str, fake_stats: httpx.Client
) -> None:
    answer, raw = ask(base_url, "hedged", stream=True)
    assert answer["content"] == answer_text(MESSAGES)
    assert raw.headers["x-nobusy-upstream"] == "backup"  # the hedge spoke first
    assert fake_stats.get("/_fake/stats").json()["in_flight"] == 0  # the slow one was closed
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'nobusy_hedges_total{alias="hedged"} 1.0' in metrics


def test_without_hedging_the_slow_route_answers(base_url: str) -> None:
    answer, raw = ask(base_url, "unhedged", stream=False)
    assert answer["content"] == answer_text(MESSAGES)
    assert raw.headers["x-nobusy-upstream"] == "fake/ok:delay=1"


def test_client_leaving_releases_the_attempt(gateway: Process, base_url: str) -> None:
    body = {"model": "slow", "stream": True, "messages": MESSAGES}
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body) as response:
        next(response.iter_lines())
    for _ in range(100):
        data = httpx.get(base_url + "/nobusy/upstreams").json()["data"]
        if next(u for u in data if u["name"] == "fake")["in_flight"] == 0:
            break
        time.sleep(0.05)
    fake = next(u for u in data if u["name"] == "fake")
    assert fake["in_flight"] == 0 and fake["state"] == "closed"  # leaving is not a failure


def test_active_probes_eject_a_dead_upstream_without_traffic(base_url: str) -> None:
    state = "closed"
    for _ in range(100):  # probed every 0.2 s; the reset above closed it
        data = httpx.get(base_url + "/nobusy/upstreams").json()["data"]
        probed = next(u for u in data if u["name"] == "probed")
        state = probed["state"]
        if state == "open":
            break
        time.sleep(0.05)
    assert state == "open"
    assert probed["attempts"] == 0  # no request was sent there: the probe found it
    assert "health probe" in probed["last_error"]


def test_what_the_messages_api_cannot_carry_is_a_400_naming_it(
    anthropic_gateway: Process, fake_stats: httpx.Client
) -> None:
    # Arguments that are not JSON cannot become a tool_use block's input: the kind refuses the
    # request before sending it, as an upstream's 400 (not retried elsewhere, no stack trace).
    bad = [
        *MESSAGES,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{x"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "r"},
    ]
    response = httpx.post(
        f"{anthropic_gateway.url}/v1/chat/completions", json={"model": "rejected", "messages": bad}
    )
    assert response.status_code == 400, response.text
    assert "arguments: not valid JSON" in response.json()["error"]["message"]
    assert "Traceback" not in response.text
    assert fake_stats.get("/_fake/stats").json()["requests"] == 0
