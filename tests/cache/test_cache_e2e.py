"""The response cache driven over loopback with the official SDKs: hit, miss and stale
headers for chat, Messages and the Responses API, streamed hits, scope between two keys,
today's guard on a kept answer, every upstream down, and the usage rows."""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from nobusy.store.migrations import DB_NAME
from nobusy.testing.fake_upstream import answer_text
from tests.admission.test_keys_e2e import make_key
from tests.conftest import Process, serve, start_fake

CONFIG = """
upstreams:
  fake: {{kind: openai, base_url: "{fake}/v1", default_model: ok, first_token_timeout: 2}}
  text: {{kind: openai, base_url: "{fake}/v1", default_model: ok, completions: true, fim: true}}
  one: {{kind: openai, base_url: "{fake}/v1", max_concurrency: 1, first_token_timeout: 30,
         idle_timeout: 30}}
models:
  narrow: {{routes: ["one/slow:chunk_delay=0.1"], cache: {{enabled: true, ttl: 0.2}}}}
  cached: {{routes: [fake/ok], cache: {{enabled: true}}}}
  shared: {{routes: [fake/ok], cache: {{enabled: true, scope: shared}}}}
  brief: {{routes: [fake/ok], cache: {{enabled: true, ttl: 0.2, stale_if_error: 3600}}}}
  plain: [fake/ok]
  code: {{routes: [text], cache: {{enabled: true}}}}
guard:
  lexicons: [{{path: "{words}", action: mask, scope: output}}]
"""


ZERO = {"temperature": 0}  # the anthropic SDK (2.x) has no temperature argument


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Process, Process, dict[str, str], Path]]:
    """A gateway with its own fake upstream (stopped by the all-down test, last), two keys."""
    tmp = tmp_path_factory.mktemp("cache")
    fake = start_fake(tmp)
    words = tmp / "words.txt"
    words.write_text("unicorn\n")
    keys = {name: make_key(tmp / "data", "--name", name) for name in ("a", "b")}
    process = serve(tmp, CONFIG.format(fake=fake.url, words=words))
    yield process, fake, keys, words
    process.stop()
    fake.stop()


# The SDK clients a test made, closed when it ends: left to the garbage collector, their
# sockets would warn (an error here) in whichever later test the collector happens to run.
_CLIENTS: list[openai.OpenAI | anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def chat(world: tuple[Process, Process, dict[str, str], Path], key: str = "a") -> openai.OpenAI:
    process, _, keys, _ = world
    client = openai.OpenAI(base_url=process.url + "/v1", api_key=keys[key], max_retries=0)
    _CLIENTS.append(client)
    return client


def claude_for(process: Process, key: str) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=process.url, api_key=key, max_retries=0)
    _CLIENTS.append(client)
    return client


def usage_rows(process: Process) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(process.data_dir / DB_NAME)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY id")]


def test_temperature_zero_is_a_miss_then_a_hit(world: Any) -> None:
    client = chat(world)
    messages = ask("what is a cache")
    first = client.chat.completions.with_raw_response.create(
        model="cached", messages=messages, temperature=0
    )
    assert first.headers["x-nobusy-cache"] == "miss"
    second = client.chat.completions.with_raw_response.create(
        model="cached", messages=messages, temperature=0
    )
    assert second.headers["x-nobusy-cache"] == "hit"
    assert second.headers["x-nobusy-upstream"] == "cache"
    assert second.parse().choices[0].message.content == answer_text(messages)
    assert second.parse().choices[0].finish_reason == "stop"
    assert second.parse().id != first.parse().id  # an answer of its own, the same content
    # Not temperature 0 and no header: not cached at all; an alias without a cache neither.
    other = client.chat.completions.with_raw_response.create(model="cached", messages=messages)
    assert "x-nobusy-cache" not in other.headers
    plain = client.chat.completions.with_raw_response.create(
        model="plain", messages=messages, temperature=0
    )
    assert "x-nobusy-cache" not in plain.headers


def test_the_header_uses_skips_or_refreshes(world: Any) -> None:
    client = chat(world)
    messages = ask("headers decide")

    def send(value: str) -> str | None:
        raw = client.chat.completions.with_raw_response.create(
            model="cached", messages=messages, temperature=0.7,
            extra_headers={"x-nobusy-cache": value},
        )  # fmt: skip
        return raw.headers.get("x-nobusy-cache")

    assert send("use") == "miss"
    assert send("use") == "hit"
    assert send("skip") is None
    assert send("refresh") == "miss"
    assert send("use") == "hit"
    with pytest.raises(openai.BadRequestError) as caught:
        send("always")
    assert "x-nobusy-cache must be one of use, skip, refresh" in str(caught.value)


def test_a_streamed_client_gets_the_kept_answer_as_a_stream(world: Any) -> None:
    client = chat(world)
    messages = ask("stream me the cache")
    client.chat.completions.create(model="cached", messages=messages, temperature=0)
    with client.chat.completions.with_streaming_response.create(
        model="cached", messages=messages, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ) as response:  # fmt: skip
        assert response.headers["x-nobusy-cache"] == "hit"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer_text(messages)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_messages_and_responses_hit_through_the_same_cache(world: Any) -> None:
    process, _, keys, _ = world
    messages = ask("one cache for every protocol")
    claude = claude_for(process, keys["a"])
    first = claude.messages.with_raw_response.create(
        model="cached", max_tokens=64, messages=messages, extra_body=ZERO
    )
    assert first.headers["x-nobusy-cache"] == "miss"
    second = claude.messages.with_raw_response.create(
        model="cached", max_tokens=64, messages=messages, extra_body=ZERO
    )
    assert second.headers["x-nobusy-cache"] == "hit"
    block = second.parse().content[0]
    assert block.type == "text" and block.text == answer_text(messages)
    with claude.messages.stream(
        model="cached", max_tokens=64, messages=messages, extra_body=ZERO
    ) as stream:
        assert stream.response.headers["x-nobusy-cache"] == "hit"
        assert "".join(stream.text_stream) == answer_text(messages)
        assert stream.get_final_message().stop_reason == "end_turn"
    responses = chat(world).responses
    made = responses.with_raw_response.create(
        model="cached", input="one cache for every protocol", temperature=0
    )
    assert made.headers["x-nobusy-cache"] == "miss"
    again = responses.with_raw_response.create(
        model="cached", input="one cache for every protocol", temperature=0
    )
    assert again.headers["x-nobusy-cache"] == "hit"
    assert again.parse().output_text == answer_text(messages)
    streamed = responses.create(
        model="cached", input="one cache for every protocol", temperature=0, stream=True
    )
    done = [e for e in streamed if e.type == "response.completed"]
    assert done and done[0].response.output_text == answer_text(messages)


def test_completions_use_the_same_cache(world: Any) -> None:
    completions = chat(world).completions
    asked = {"model": "code", "prompt": "def add(a, b):", "suffix": "\n", "temperature": 0}
    first = completions.with_raw_response.create(**asked)
    assert first.headers["x-nobusy-cache"] == "miss"
    second = completions.with_raw_response.create(**asked)
    assert second.headers["x-nobusy-cache"] == "hit"
    assert second.parse().choices[0].text == first.parse().choices[0].text
    streamed = completions.create(**asked, stream=True)
    assert (
        "".join(c.choices[0].text for c in streamed if c.choices) == first.parse().choices[0].text
    )


def test_a_kept_answer_is_its_keys_unless_shared(world: Any) -> None:
    messages = ask("whose answer is this")
    for alias, other in (("cached", "miss"), ("shared", "hit")):
        chat(world, "a").chat.completions.create(model=alias, messages=messages, temperature=0)
        raw = chat(world, "b").chat.completions.with_raw_response.create(
            model=alias, messages=messages, temperature=0
        )
        assert raw.headers["x-nobusy-cache"] == other, alias


def test_the_guard_in_force_now_applies_to_a_kept_answer(world: Any) -> None:
    _, _, _, words = world
    client = chat(world)
    messages = ask("tell me about zebras")
    kept = client.chat.completions.create(model="cached", messages=messages, temperature=0)
    assert "zebras" in (kept.choices[0].message.content or "")
    words.write_text("unicorn\nzebras\n")
    stamp = time.time() + 5  # a different mtime whatever the file system's resolution
    os.utime(words, (stamp, stamp))
    deadline = time.monotonic() + 15
    while True:  # the guard looks at the lexicon files about once a second
        raw = client.chat.completions.with_raw_response.create(
            model="cached", messages=messages, temperature=0
        )
        assert raw.headers["x-nobusy-cache"] == "hit"
        text = raw.parse().choices[0].message.content or ""
        if "zebras" not in text:
            break
        assert time.monotonic() < deadline, "the new lexicon never applied to the kept answer"
        time.sleep(0.2)
    assert text == answer_text(messages).replace("zebras", "＊" * 6)


def test_usage_marks_answers_from_the_cache(world: Any) -> None:
    process = world[0]
    client = chat(world)
    messages = ask("count me")
    client.chat.completions.create(model="cached", messages=messages, temperature=0)
    hit = client.chat.completions.with_raw_response.create(
        model="cached", messages=messages, temperature=0
    )
    request_id = hit.headers["x-request-id"]
    for _ in range(100):
        found = [r for r in usage_rows(process) if r["request_id"] == request_id]
        if found:
            break
        time.sleep(0.05)
    assert found[0]["cache"] == "hit" and found[0]["upstream"] == "cache"
    assert found[0]["prompt_tokens"] == found[0]["completion_tokens"] == 0
    assert hit.parse().usage is not None and hit.parse().usage.completion_tokens > 0
    metrics = httpx.get(process.url + "/metrics").text
    assert 'nobusy_cache_lookups_total{result="hit"}' in metrics
    assert "nobusy_cache_entries" in metrics


def test_a_queue_that_cannot_admit_serves_the_kept_answer_stale(world: Any) -> None:
    process = world[0]
    client = chat(world)
    messages = ask("a narrow door")
    client.chat.completions.create(model="narrow", messages=messages, temperature=0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = pool.submit(
            client.chat.completions.create, model="narrow", messages=ask("hold the slot")
        )
        for _ in range(400):  # until the other request holds the upstream's one slot
            metrics = httpx.get(process.url + "/metrics").text
            if 'nobusy_upstream_in_flight{upstream="one"} 1.0' in metrics:
                break
            time.sleep(0.01)
        time.sleep(0.2)  # past the ttl: a hit no more
        raw = client.chat.completions.with_raw_response.create(
            model="narrow", messages=messages, temperature=0,
            extra_headers={"x-nobusy-max-wait": "0"},
        )  # fmt: skip
        assert raw.headers["x-nobusy-cache"] == "stale"
        assert raw.parse().choices[0].message.content == answer_text(messages)
        with pytest.raises(openai.RateLimitError):  # never kept: the queue's 429 stands
            client.chat.completions.create(
                model="narrow", messages=ask("never kept"), temperature=0,
                extra_headers={"x-nobusy-max-wait": "0"},
            )  # fmt: skip
        holder.result()


def test_every_upstream_down_serves_the_kept_answer_stale(world: Any) -> None:
    """Last in this module: it stops the fake upstream."""
    process, fake, keys, _ = world
    client = chat(world)
    messages = ask("the night everything failed")
    client.chat.completions.create(model="brief", messages=messages, temperature=0)
    claude = claude_for(process, keys["a"])
    claude.messages.create(model="brief", max_tokens=64, messages=messages, extra_body=ZERO)
    fake.stop()
    time.sleep(0.3)  # past the alias's ttl of 0.2 s: no longer a hit
    raw = client.chat.completions.with_raw_response.create(
        model="brief", messages=messages, temperature=0
    )
    assert raw.status_code == 200 and raw.headers["x-nobusy-cache"] == "stale"
    assert raw.parse().choices[0].message.content == answer_text(messages)
    url = process.url + "/v1/chat/completions"
    body = {"model": "brief", "messages": messages, "temperature": 0, "stream": True}
    headers = {"authorization": f"Bearer {keys['a']}"}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        assert response.headers["x-nobusy-cache"] == "stale"
        lines = list(response.iter_lines())
    assert any(line.startswith(": nobusy: no upstream could answer") for line in lines)
    assert [line for line in lines if line][-1] == "data: [DONE]"
    with claude.messages.stream(
        model="brief", max_tokens=64, messages=messages, extra_body=ZERO
    ) as stream:
        assert "".join(stream.text_stream) == answer_text(messages)
    # A request never kept still gets the error.
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="brief", messages=ask("never seen"), temperature=0)
    assert caught.value.status_code == 503
