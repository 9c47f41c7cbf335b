"""The Messages and Responses APIs behind keys: `x-api-key` or bearer, Anthropic's
401/403/429, and the same usage and audit rows as chat requests."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from nobusy.store.audit import AUDIT_DB
from nobusy.store.migrations import DB_NAME
from nobusy.testing.fake_upstream import answer_text
from tests.admission.test_keys_e2e import make_key
from tests.conftest import Process, serve

MESSAGES: list[Any] = [{"role": "user", "content": "Are you there?"}]


@pytest.fixture(scope="module")
def keyed(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("messages-keyed")
    data = tmp / "data"
    keys = {
        "plain": make_key(data, "--name", "plain"),
        "narrow": make_key(data, "--name", "narrow", "--models", "other"),
        "slow": make_key(data, "--name", "slow", "--rpm", "1"),
    }
    config = f"""
audit: {{enabled: true, store: full}}
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
  one: {{kind: openai, base_url: "{fake_upstream.url}/v1", max_concurrency: 1,
         first_token_timeout: 30, idle_timeout: 30}}
models:
  ok: [fake/ok]
  other: [fake/ok]
  single: ["one/slow:chunk_delay=0.1"]
"""
    process = serve(tmp, config)
    yield process, keys
    process.stop()


def sdk(process: Process, **auth: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=process.url, max_retries=0, **auth)  # type: ignore[arg-type]


def rows(process: Process, db: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(process.data_dir / db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args)]


def wait_for(process: Process, db: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    # The audit log is written by a batch writer after the answer: give it a moment.
    for _ in range(100):
        found = rows(process, db, sql, *args)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"nothing in {db} for {args}")


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_usage_and_audit_rows_as_for_chat(
    keyed: tuple[Process, dict[str, str]], stream: bool
) -> None:
    process, keys = keyed
    with sdk(process, api_key=keys["plain"]) as client:
        if stream:
            with client.messages.stream(model="ok", max_tokens=64, messages=MESSAGES) as events:
                message = events.get_final_message()
                request_id = events.response.headers["x-request-id"]
        else:
            raw = client.messages.with_raw_response.create(
                model="ok", max_tokens=64, messages=MESSAGES
            )
            message, request_id = raw.parse(), raw.headers["x-request-id"]
    assert message.content[0].text == answer_text(MESSAGES)  # type: ignore[union-attr]
    (usage,) = rows(process, DB_NAME, "SELECT * FROM usage WHERE request_id = ?", request_id)
    assert usage["alias"] == "ok" and usage["outcome"] == "ok"
    assert usage["stream"] == int(stream) and usage["upstream"] == "fake/ok"
    assert usage["key_id"] is not None
    assert usage["completion_tokens"] == message.usage.output_tokens > 0
    assert usage["prompt_tokens"] == message.usage.input_tokens
    events = wait_for(
        process,
        AUDIT_DB,
        "SELECT event, content FROM audit WHERE request_id = ? ORDER BY id",
        request_id,
    )
    # The request as nobusy routed it (the internal chat body) and the answer (encrypted).
    assert [e["event"] for e in events] == ["request", "response"]


def test_bearer_works_as_well_as_x_api_key(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    with sdk(process, auth_token=keys["plain"]) as client:
        message = client.messages.create(model="ok", max_tokens=16, messages=MESSAGES)
    assert message.stop_reason == "end_turn"


def test_auth_and_limits_in_anthropics_shape(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    with sdk(process, api_key="nb-wrong") as client:
        with pytest.raises(anthropic.AuthenticationError) as unknown:
            client.messages.create(model="ok", max_tokens=16, messages=MESSAGES)
    assert unknown.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    missing = httpx.post(
        process.url + "/v1/messages",
        json={"model": "ok", "max_tokens": 16, "messages": MESSAGES},
    )
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "x-api-key" in missing.json()["error"]["message"]
    with sdk(process, api_key=keys["narrow"]) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as narrow:
            client.messages.create(model="ok", max_tokens=16, messages=MESSAGES)
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.count_tokens(model="ok", messages=MESSAGES)
    assert narrow.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    with sdk(process, api_key=keys["slow"]) as client:
        client.messages.create(model="ok", max_tokens=16, messages=MESSAGES)
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.messages.create(model="ok", max_tokens=16, messages=MESSAGES)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "retry-after" in limited.value.response.headers


def test_body_over_the_cap_is_413_request_too_large(
    keyed: tuple[Process, dict[str, str]],
) -> None:
    process, keys = keyed
    big = {
        "model": "ok",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "x" * 11_000_000}],
    }
    response = httpx.post(
        process.url + "/v1/messages", json=big, headers={"x-api-key": keys["plain"]}
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_a_queued_stream_is_still_anthropics(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    headers = {"x-api-key": keys["plain"]}
    body = {"model": "single", "max_tokens": 64, "messages": MESSAGES}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            httpx.post, process.url + "/v1/messages", json=body, headers=headers, timeout=60
        )
        for _ in range(400):  # until the first request holds the upstream's one slot
            metrics = httpx.get(process.url + "/metrics").text
            if 'nobusy_upstream_in_flight{upstream="one"} 1.0' in metrics:
                break
            time.sleep(0.01)
        url = process.url + "/v1/messages"
        streamed = {**body, "stream": True}
        with httpx.stream("POST", url, json=streamed, headers=headers, timeout=60) as response:
            assert response.headers["x-nobusy-upstream"] == "queued"
            lines = list(response.iter_lines())
        assert first.result().status_code == 200
    assert any(line.startswith(": nobusy: queued, position") for line in lines)
    data = [orjson.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in data][:2] == ["message_start", "ping"]
    assert data[-1]["type"] == "message_stop"
    text = "".join(d["delta"].get("text", "") for d in data if d["type"] == "content_block_delta")
    assert text == answer_text(MESSAGES)


def test_responses_api_writes_usage_rows_too(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    response = httpx.post(
        process.url + "/v1/responses",
        json={"model": "ok", "input": "Are you there?"},
        headers={"authorization": f"Bearer {keys['plain']}"},
    )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    (usage,) = rows(process, DB_NAME, "SELECT * FROM usage WHERE request_id = ?", request_id)
    assert usage["outcome"] == "ok" and usage["key_id"] is not None
    assert usage["completion_tokens"] == response.json()["usage"]["output_tokens"] > 0


def test_a_kept_response_is_its_keys_only(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    clients = {
        name: openai.OpenAI(base_url=process.url + "/v1", api_key=keys[name], max_retries=0)
        for name in ("plain", "narrow")
    }
    try:
        mine = clients["plain"].responses.create(model="other", input="Are you there?")
        assert clients["plain"].responses.retrieve(mine.id).id == mine.id
        with pytest.raises(openai.NotFoundError):
            clients["narrow"].responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            clients["narrow"].responses.create(
                model="other", input="And?", previous_response_id=mine.id
            )
        with pytest.raises(openai.NotFoundError):
            clients["narrow"].responses.delete(mine.id)
        assert clients["plain"].responses.retrieve(mine.id).id == mine.id
    finally:
        for client in clients.values():
            client.close()
