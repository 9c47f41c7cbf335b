"""Before the first token, a failing route is replaced by the next one, unseen by the client."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from nobusy.fake_upstream import answer_text

MESSAGES: list[Any] = [{"role": "user", "content": "Are you there?"}]


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_refused_503_hang_keepalive_then_ok(base_url: str, stream: bool) -> None:
    # refused -> 503 -> hangs before headers -> keep-alive comments only -> ok
    raw = client(base_url).chat.completions.with_raw_response.create(
        model="failover", messages=MESSAGES, stream=stream
    )
    assert raw.headers["x-nobusy-upstream"] == "fake/ok"
    result: Any = raw.parse()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in result if c.choices)
    else:
        text = result.choices[0].message.content
    assert text == answer_text(MESSAGES)


def test_request_error_from_upstream_is_returned_not_retried(
    base_url: str, fake_stats: httpx.Client
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(base_url).chat.completions.create(model="rejected", messages=MESSAGES)
    assert "temperature" in info.value.message
    assert fake_stats.get("/_fake/stats").json()["requests"] == 1  # the ok route was not tried


def test_all_down_is_503_naming_each_upstream(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/chat/completions", json={"model": "alldown", "messages": MESSAGES}
    )
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "service_unavailable"
    assert "refused: cannot connect" in error["message"]
    assert "fake: HTTP 503" in error["message"]
    assert response.headers["retry-after"] == "30"
    assert "sk-test-secret" not in response.text
