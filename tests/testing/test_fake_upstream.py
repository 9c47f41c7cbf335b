"""The fake upstream over real HTTP: uvicorn (httptools + uvloop) in a thread, httpx as client."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from click.testing import CliRunner

from nobusy.testing.fake_upstream import (
    BUSY_MESSAGE,
    MODES,
    FakeOptions,
    answer_pieces,
    answer_text,
    create_fake_app,
    fake_upstream_command,
    reasoning_text,
)

QUESTION = [{"role": "user", "content": "What is nobusy?"}]


@contextlib.contextmanager
def serve(options: FakeOptions) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_fake_app(options),
        http="httptools",
        loop="uvloop",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "fake upstream did not start"
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with serve(FakeOptions()) as url:
        yield url


@pytest.fixture
def client(fake_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake_url, timeout=5) as c:
        yield c


def chat(client: httpx.Client, model: str = "fake-model", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": QUESTION, **extra}
    return client.post("/v1/chat/completions", json=body)


def stream_events(client: httpx.Client, body: dict[str, Any], **kw: Any) -> list[str]:
    """The data payloads of an SSE response, in order."""
    with client.stream("POST", "/v1/chat/completions", json=body, **kw) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def deltas(events: list[str]) -> list[dict[str, Any]]:
    return [orjson.loads(e)["choices"][0]["delta"] for e in events if e != "[DONE]"]


def wait_idle(client: httpx.Client) -> dict[str, Any]:
    # The server notices a vanished client asynchronously; wait for it rather than for a time.
    deadline = time.monotonic() + 5
    while (stats := client.get("/_fake/stats").json())["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return stats  # type: ignore[no-any-return]


def test_pieces_are_exact_words() -> None:
    pieces = answer_pieces(QUESTION, 12)
    assert len(pieces) == 12 and all(pieces)
    assert "".join(pieces) == answer_text(QUESTION) == answer_text(QUESTION, 12)
    assert answer_text(QUESTION).startswith("Fake answer to: What is nobusy?. alpha ")
    assert all(p.endswith(" ") for p in pieces[:-1]) and not pieces[-1].endswith(" ")
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is nobusy?"}]}]
    assert answer_text(parts) == answer_text(QUESTION)
    long = [{"role": "user", "content": " ".join(["word"] * 50)}]
    assert len(answer_pieces(long, 5)) == 5 and " ".join(answer_text(long, 5).split()) == (
        "Fake answer to: " + " ".join(["word"] * 50) + "."
    )


def test_ok_non_stream(client: httpx.Client) -> None:
    response = chat(client, "my-model")
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion" and data["model"] == "my-model"
    assert data["id"].startswith("chatcmpl-fake-")
    assert data["choices"][0]["message"] == {"role": "assistant", "content": answer_text(QUESTION)}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 12, "total_tokens": 15}


def test_tail_is_said_after_the_answer(client: httpx.Client) -> None:
    message = chat(client, "ok:tail=请加微信：kxx_6688 预约").json()["choices"][0]["message"]
    assert message["content"] == answer_text(QUESTION) + " 请加微信：kxx_6688 预约"


def test_ok_stream_with_usage(client: httpx.Client) -> None:
    body = {"model": "m", "messages": QUESTION, "stream": True}
    events = stream_events(client, body | {"stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["model"] == "m"
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:13]]
    assert pieces == answer_pieces(QUESTION)
    assert chunks[13]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[14]["choices"] == [] and chunks[14]["usage"]["completion_tokens"] == 12
    assert len(chunks) == 15
    without_usage = stream_events(client, body)
    assert len(without_usage) == 15 and "usage" not in without_usage[-2]


def test_text_completions(client: httpx.Client) -> None:
    expected = answer_text([{"role": "user", "content": "Once upon"}])
    data = client.post("/v1/completions", json={"model": "m", "prompt": "Once upon"}).json()
    assert data["object"] == "text_completion" and data["choices"][0]["text"] == expected
    body = {"model": "m", "prompt": "Once upon", "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(orjson.loads(e)["choices"][0]["text"] for e in events[:-1]) == expected


def test_drop_cuts_the_connection(client: httpx.Client) -> None:
    seen: list[str] = []
    body = {"model": "drop:drop_after=4", "messages": QUESTION, "stream": True}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        seen.extend(response.iter_lines())
    payloads = [orjson.loads(line[6:]) for line in seen if line.startswith("data: ")]
    assert "data: [DONE]" not in seen and len(payloads) == 5
    assert "".join(p["choices"][0]["delta"]["content"] for p in payloads) == "".join(
        answer_pieces(QUESTION)[:4]
    )
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, "drop")


def test_garbage(client: httpx.Client) -> None:
    events = stream_events(client, {"model": "garbage", "messages": QUESTION, "stream": True})
    assert deltas(events[:2])[1] == {"content": answer_pieces(QUESTION)[0]}
    assert events[2:] == ["{not json!!"]
    response = chat(client, "garbage")
    assert response.status_code == 200 and response.text == '{"choices": ['


def test_error_in_stream(client: httpx.Client) -> None:
    body = {"model": "m", "messages": QUESTION, "stream": True}
    events = stream_events(client, body, headers={"x-fake-mode": "error-in-stream"})
    assert len(events) == 4 and orjson.loads(events[3])["error"]["type"] == "server_error"
    response = client.post(
        "/v1/chat/completions",
        json=body | {"stream": False},
        headers={"x-fake-mode": "error-in-stream"},
    )
    assert response.status_code == 200 and response.json()["error"]["message"] == "Internal error"


def test_reasoning(client: httpx.Client) -> None:
    events = stream_events(client, {"model": "reasoning", "messages": QUESTION, "stream": True})
    ds = deltas(events)[1:-1]
    assert "".join(d["reasoning_content"] for d in ds[:12]) == reasoning_text(QUESTION)
    assert all(d["content"] is None for d in ds[:12])
    assert "".join(d["content"] for d in ds[12:]) == answer_text(QUESTION)
    message = chat(client, "reasoning").json()["choices"][0]["message"]
    assert message["reasoning_content"] == reasoning_text(QUESTION)
    assert message["content"] == answer_text(QUESTION)


def test_tool_call(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "search", "parameters": {}}}]
    body = {"model": "tool-call", "messages": QUESTION, "stream": True, "tools": tools}
    events = stream_events(client, body)
    chunks = [orjson.loads(e) for e in events[:-1]]
    first = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert first == {
        "index": 0,
        "id": "call_fake_1",
        "type": "function",
        "function": {"name": "search", "arguments": ""},
    }
    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[2:-1]]
    assert len(fragments) == 4
    arguments = "".join(f["function"]["arguments"] for f in fragments)
    assert orjson.loads(arguments) == {"query": "What is nobusy?"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    message = chat(client, "tool-call", tools=tools).json()["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["name"] == "search"
    assert chat(client, "tool-call").json()["choices"][0]["message"]["content"] == answer_text(
        QUESTION
    )


def test_http_errors(client: httpx.Client) -> None:
    busy = chat(client, "http503:retry_after=7")
    assert busy.status_code == 503 and busy.headers["retry-after"] == "7"
    assert busy.json()["error"]["message"] == BUSY_MESSAGE
    limited = chat(client, "http429")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "30"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    auth = chat(client, "http:status=401")
    assert auth.status_code == 401
    assert auth.json()["error"]["message"] == "Incorrect API key provided"
    headers = {"x-fake-mode": "http:status=400"}
    body = {"model": "big-context", "messages": QUESTION}
    too_long = client.post("/v1/chat/completions", json=body, headers=headers).json()["error"]
    assert too_long["message"] == "This model's maximum context length is 10 tokens"
    assert chat(client, "http:status=529").status_code == 529
    bad = client.post("/v1/chat/completions", json=body, headers={"x-fake-mode": "nope"})
    assert bad.status_code == 400 and set(bad.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert chat(client, "drop:bogus=1").status_code == 400


def test_capacity_rejects_the_extra_request() -> None:
    with serve(FakeOptions(capacity=2)) as url, httpx.Client(base_url=url, timeout=5) as client:
        body = {"model": "slow:chunk_delay=0.5", "messages": QUESTION, "stream": True}
        with contextlib.ExitStack() as stack:
            for _ in range(2):  # response headers in hand => the server holds the request
                response = stack.enter_context(
                    client.stream("POST", "/v1/chat/completions", json=body)
                )
                assert response.status_code == 200
            rejected = chat(client)
            assert rejected.status_code == 503 and rejected.headers["retry-after"] == "30"
            assert rejected.json()["error"]["message"] == BUSY_MESSAGE
        stats = wait_idle(client)
        assert stats == {
            "requests": 3,
            "in_flight": 0,
            "rejected": 1,
            "max_in_flight": 2,
            "queued": 0,
        }
        assert chat(client).status_code == 200


def test_prefix_continuation_sends_only_the_remainder(client: httpx.Client) -> None:
    full = answer_text(QUESTION)
    partial = full[: full.index("nobusy") + 3]  # cuts inside a word
    messages = [*QUESTION, {"role": "assistant", "content": partial, "prefix": True}]
    data = client.post("/v1/chat/completions", json={"model": "m", "messages": messages}).json()
    assert partial + data["choices"][0]["message"]["content"] == full
    events = stream_events(client, {"model": "m", "messages": messages, "stream": True})
    pieces = [d["content"] for d in deltas(events)[1:-1]]
    assert pieces[0] == "usy?. " and partial + "".join(pieces) == full
    vllm = [*QUESTION, {"role": "assistant", "content": partial}]
    body = {"model": "m", "messages": vllm, "continue_final_message": True}
    data = client.post("/v1/chat/completions", json=body).json()
    assert partial + data["choices"][0]["message"]["content"] == full
    foreign = [*QUESTION, {"role": "assistant", "content": "Something else", "prefix": True}]
    data = client.post("/v1/chat/completions", json={"model": "m", "messages": foreign}).json()
    assert data["choices"][0]["message"]["content"] == full


def test_hang_and_keepalive_release_on_disconnect(client: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            "/v1/chat/completions", json={"model": "hang", "messages": QUESTION}, timeout=0.2
        )
    body = {"model": "keepalive", "messages": QUESTION, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert next(response.iter_lines()) == ": keep-alive"
    with client.stream("POST", "/v1/chat/completions", json=body | {"stream": False}) as response:
        assert response.headers["content-type"] == "application/json"
        assert next(response.iter_raw()) == b"\n"
    assert wait_idle(client)["in_flight"] == 0


def test_stats_models_and_misc(client: httpx.Client) -> None:
    assert client.post("/_fake/reset").json()["requests"] == 0
    for _ in range(3):
        chat(client)
    assert client.get("/_fake/stats").json()["requests"] == 3
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids[0] == "fake-model" and set(MODES) <= set(ids)
    assert client.get("/healthz").json() == {"status": "ok"}
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and "message" in missing.json()["error"]
    assert client.post("/chat/completions", content=b"{oops").status_code == 400


def test_cli_help() -> None:
    result = CliRunner().invoke(fake_upstream_command, ["--help"])
    assert result.exit_code == 0 and "--drop-after" in result.output


def test_fail_every_and_slow_every() -> None:
    with serve(FakeOptions()) as url, httpx.Client(base_url=url, timeout=5) as client:
        flaky = [chat(client, "http503:fail_every=2,retry_after=-1") for _ in range(4)]
        assert [r.status_code for r in flaky] == [200, 503, 200, 503]
        assert flaky[0].json()["choices"][0]["message"]["content"] == answer_text(QUESTION)
        assert "retry-after" not in flaky[1].headers
        # Each mode string counts its own requests; a reset starts every count again.
        assert chat(client, "http429:fail_every=2").status_code == 200
        limited = chat(client, "http429:fail_every=2")
        assert limited.status_code == 429 and limited.headers["retry-after"] == "30"
        client.post("/_fake/reset")
        assert chat(client, "http503:fail_every=2,retry_after=-1").status_code == 200
        times = []
        for _ in range(3):
            started = time.perf_counter()
            assert chat(client, "ok:delay=0.3,slow_every=3").status_code == 200
            times.append(time.perf_counter() - started)
        assert times[0] < 0.2 and times[1] < 0.2 and times[2] >= 0.3
        assert chat(client, "http503:fail_every=0").status_code == 400
    with pytest.raises(ValueError, match="slow_every"):
        create_fake_app(FakeOptions(slow_every=0))


@pytest.mark.parametrize("honoured", ["prefix", "vllm", "none"])
def test_fake_honours_only_its_continuations(client: httpx.Client, honoured: str) -> None:
    # As a real upstream: a continuation field it does not know is ignored, and a model
    # answering a conversation that ends with its own message starts over.
    full = answer_text(QUESTION)
    partial = full[: full.index("nobusy")]
    prefix = [*QUESTION, {"role": "assistant", "content": partial, "prefix": True}]
    vllm = [*QUESTION, {"role": "assistant", "content": partial}]
    model = f"ok:continuation={honoured}"
    for mode, body in [
        ("prefix", {"model": model, "messages": prefix}),
        ("vllm", {"model": model, "messages": vllm, "continue_final_message": True}),
    ]:
        text = client.post("/v1/chat/completions", json=body).json()
        expected = full[len(partial) :] if mode == honoured else full
        assert text["choices"][0]["message"]["content"] == expected, mode


def test_fake_asked_in_words_restates_its_last_words(client: httpx.Client) -> None:
    full = answer_text(QUESTION)
    partial = full[: full.index("nobusy") - 1]  # "Fake answer to: What is"
    messages = [
        *QUESTION,
        {"role": "assistant", "content": partial},
        {"role": "user", "content": "Please continue where you stopped."},
    ]
    data = chat(client, "ok:continuation=none", messages=messages).json()
    assert data["choices"][0]["message"]["content"] == "to: What is" + full[len(partial) :]
