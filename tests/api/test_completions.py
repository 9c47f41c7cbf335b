"""`POST /v1/completions` with the official SDK: plain, streamed, fill-in-the-middle, stop,
failover before the first token and continuation after it, routes chosen by what they serve,
and bad bodies as OpenAI's 400s."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from nobusy.testing.fake_completions import completion_messages
from nobusy.testing.fake_upstream import answer_text
from tests.api.test_bad_input import assert_openai_error
from tests.conftest import Process, free_port, openai_client, serve

PROMPT = "def add(a, b):"
SUFFIX = "    return result"

CONFIG = """
max_attempts: 4
retry_budget_min: 100000
upstreams:
  text: {{kind: openai, base_url: "{fake}", completions: true, first_token_timeout: 2,
          idle_timeout: 1}}
  fim: {{kind: openai, base_url: "{fake}", default_model: ok, completions: true, fim: true}}
  chatonly: {{kind: openai, base_url: "{fake}", default_model: ok}}
  refused: {{kind: openai, base_url: "http://127.0.0.1:{dead}/v1", default_model: ok,
             completions: true, fim: true}}
models:
  ok: [text/ok]
  fim: [fim]
  chat: [chatonly]
  mixed: [chatonly, text/ok]
  failover: [refused, text/http503, text/hang, fim]
  cut: ["text/drop:drop_after=2", fim]
  cut0: ["text/drop:drop_after=0", fim]
  garbage: [text/garbage, fim]
  error-in-stream: [text/error-in-stream, fim]
  keepalive: [text/keepalive, fim]
  limited: ["text/http429:retry_after=7", fim]
"""


@pytest.fixture(scope="module")
def gateway(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("completions")
    process = serve(tmp, CONFIG.format(fake=f"{fake_upstream.url}/v1", dead=free_port()))
    yield process
    process.stop()


@pytest.fixture()
def client(gateway: Process) -> openai.OpenAI:
    httpx.post(gateway.url + "/v1/nobusy/upstreams/all/reset").raise_for_status()
    return openai_client(gateway.url + "/v1")


def expected(prompt: str = PROMPT, suffix: str | None = None) -> str:
    return answer_text(completion_messages(prompt, suffix))


def streamed(stream: Any) -> tuple[str, str | None, Any]:
    text, finish, usage = [], None, None
    for chunk in stream:
        assert chunk.object == "text_completion"
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text.append(choice.text)
            finish = choice.finish_reason or finish
    return "".join(text), finish, usage


def test_plain(client: openai.OpenAI) -> None:
    result = client.completions.create(model="ok", prompt=PROMPT, max_tokens=50)
    assert result.object == "text_completion"
    assert result.id.startswith("cmpl-")
    assert result.model == "ok"
    assert result.choices[0].text == expected()
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None and result.usage.completion_tokens == 12


def test_streamed_with_usage(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="ok", prompt=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage = streamed(stream)
    assert text == expected()
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 12


def test_streamed_without_usage_hides_it(client: openai.OpenAI) -> None:
    text, _, usage = streamed(client.completions.create(model="ok", prompt=PROMPT, stream=True))
    assert text == expected() and usage is None


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_suffix_fills_in_the_middle(
    client: openai.OpenAI, fake_upstream: Process, stream: bool
) -> None:
    result: Any = client.completions.create(
        model="fim", prompt=PROMPT, suffix=SUFFIX, stream=stream
    )
    text = streamed(result)[0] if stream else result.choices[0].text
    assert text == expected(PROMPT, SUFFIX)
    sent = httpx.get(fake_upstream.url + "/_fake/last").json()
    assert sent["prompt"] == PROMPT and sent["suffix"] == SUFFIX
    assert "messages" not in sent


def test_stop_and_sampling_reach_the_upstream(
    client: openai.OpenAI, fake_upstream: Process
) -> None:
    client.completions.create(
        model="ok", prompt=PROMPT, stop=["\n\n", "def "], temperature=0.2, top_p=0.9, max_tokens=7
    )
    sent = httpx.get(fake_upstream.url + "/_fake/last").json()
    assert sent["stop"] == ["\n\n", "def "]
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.2, 0.9, 7)


def test_a_list_of_one_prompt_and_echo(client: openai.OpenAI) -> None:
    result = client.completions.create(model="ok", prompt=[PROMPT], echo=True)
    assert result.choices[0].text == PROMPT + expected()
    stream = client.completions.create(model="ok", prompt=PROMPT, echo=True, stream=True)
    text, _, _ = streamed(stream)
    assert text == PROMPT + expected()


def test_routes_that_do_not_serve_completions_are_skipped(
    client: openai.OpenAI, gateway: Process
) -> None:
    raw = client.completions.with_raw_response.create(model="mixed", prompt=PROMPT)
    assert raw.headers["x-nobusy-upstream"] == "text/ok"
    assert raw.parse().choices[0].text == expected()


@pytest.mark.parametrize(
    ("model", "suffix", "says", "param"),
    [
        ("chat", None, "takes text completions", "model"),
        ("ok", SUFFIX, "fill-in-the-middle", "suffix"),
    ],
)
def test_no_route_fits_is_a_400_naming_why(
    gateway: Process, model: str, suffix: str | None, says: str, param: str
) -> None:
    body: dict[str, Any] = {"model": model, "prompt": PROMPT}
    if suffix:
        body["suffix"] = suffix
    response = httpx.post(gateway.url + "/v1/completions", json=body)
    message = assert_openai_error(response, 400, param)
    assert says in message and "true" in message


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_failover_before_the_first_token(client: openai.OpenAI, stream: bool) -> None:
    raw = client.completions.with_raw_response.create(
        model="failover", prompt=PROMPT, suffix=SUFFIX, stream=stream
    )
    result: Any = raw.parse()
    text = streamed(result)[0] if stream else result.choices[0].text
    assert text == expected(PROMPT, SUFFIX)
    assert raw.headers["x-nobusy-upstream"] == "fim"


@pytest.mark.parametrize(
    "model", ["cut", "cut0", "garbage", "error-in-stream", "keepalive", "limited"]
)
@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_every_fault_gives_the_healthy_text(
    client: openai.OpenAI, fake_upstream: Process, model: str, stream: bool
) -> None:
    raw = client.completions.with_raw_response.create(
        model=model, prompt=PROMPT, stream=stream, max_tokens=40
    )
    result: Any = raw.parse()
    text = streamed(result)[0] if stream else result.choices[0].text
    assert text == expected()
    if model == "cut":  # two pieces were sent: the prompt carried them to the next route
        sent = httpx.get(fake_upstream.url + "/_fake/last").json()
        assert sent["prompt"] == PROMPT + "Fake answer"  # its trailing space held back
        assert sent["max_tokens"] == 38
        if not stream:
            assert "prompt" in raw.headers["x-nobusy-failover"]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ('{"model": "ok"}', "prompt", "Missing required parameter: 'prompt'"),
        ('{"prompt": "x"}', "model", "'model'"),
        ('{"model": "ok", "prompt": ["a", "b"]}', "prompt", "one prompt per request"),
        ('{"model": "ok", "prompt": [1, 2, 3]}', "prompt", "token ids"),
        ('{"model": "ok", "prompt": 5}', "prompt", "Expected str | array, got int"),
        ('{"model": "ok", "prompt": []}', "prompt", "must be a string"),
        ('{"model": "ok", "prompt": "x", "n": 2}', "n", "n=2"),
        ('{"model": "ok", "prompt": "x", "best_of": 3}', "best_of", "best_of"),
        ('{"model": "ok", "prompt": "x", "logprobs": 2}', "logprobs", "logprobs"),
        ('{"model": "ok", "prompt": "x", "echo": true, "suffix": "y"}', "echo", "echo"),
        ('{"model": "ok", "prompt": "x", "max_tokens": 0}', "max_tokens", "at least 1"),
        ('{"model": "ok", "prompt": "x", "temperature": 3}', "temperature", "between 0 and 2"),
        ('{"model": "ok", "prompt": "x", "suffix": 4}', "suffix", "Expected str"),
        ('{"model": "ok", "prompt": "x"', None, "not valid JSON"),
    ],
)
def test_bad_bodies_are_openai_400s(gateway: Process, body: str, param: str, says: str) -> None:
    response = httpx.post(
        gateway.url + "/v1/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert says in assert_openai_error(response, 400, param)


def test_sdk_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="ok", prompt=PROMPT, n=2)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt=PROMPT)
