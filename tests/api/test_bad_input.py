"""Every client mistake gets a 4xx in OpenAI's error shape that says what to fix; never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest


def post(base_url: str, content: bytes | str, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{base_url}/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        **kwargs,
    )


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert "x-request-id" in response.headers
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert "Traceback" not in response.text and 'File "' not in response.text
    message: str = error["message"]
    return message


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ('{"model": "ok", "messages": [', None, "not valid JSON"),
        ("", None, "body is empty"),
        ("[1, 2]", None, "must be a JSON object"),
        ('{"model": "ok"}', "messages", "Missing required parameter: 'messages'"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "model", "'model'"),
        ('{"model": "ok", "messages": []}', "messages", "at least one message"),
        ('{"model": "ok", "messages": "hi"}', "messages", "Expected array, got str"),
        ('{"model": 7, "messages": [{"role": "user", "content": "hi"}]}', "model", "Expected str"),
        (
            '{"model": "ok", "messages": [{"content": "hi"}]}',
            "messages[0].role",
            "'messages[0].role'",
        ),
        (
            '{"model": "ok", "messages": [{"role": "robot", "content": "hi"}]}',
            "messages[0].role",
            "Invalid role 'robot'",
        ),
        (
            '{"model": "ok", "messages": [{"role": "user", "content": 5}]}',
            "messages[0].content",
            "Invalid value",
        ),
        (
            '{"model": "ok", "messages": [{"role": "user", "content": "hi"}], "n": 3}',
            "n",
            "n=3 is not supported",
        ),
        (
            '{"model": "ok", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
            "stream",
            "Expected bool",
        ),
        (
            '{"model": "ok", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
            "max_tokens",
            "at least 1",
        ),
        (
            '{"model": "ok", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}',
            "temperature",
            "between 0 and 2",
        ),
    ],
)
def test_bad_body_is_400_saying_what_to_fix(
    base_url: str, body: str, param: str | None, says: str
) -> None:
    message = assert_openai_error(post(base_url, body), 400, param)
    assert says in message


def test_n_equal_one_is_fine(base_url: str) -> None:
    body = '{"model": "ok", "messages": [{"role": "user", "content": "hi"}], "n": 1}'
    assert post(base_url, body).status_code == 200


def test_body_over_cap_by_content_length_is_413(base_url: str) -> None:
    big = (
        b'{"model": "ok", "messages": [{"role": "user", "content": "' + b"x" * (11 << 20) + b'"}]}'
    )
    response = post(base_url, big)
    message = assert_openai_error(response, 413)
    assert "larger than the limit of 10485760 bytes" in message


def test_chunked_body_over_cap_is_413(base_url: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "ok", "messages": [{"role": "user", "content": "'
        for _ in range(12):
            yield b"x" * (1 << 20)
        yield b'"}]}'

    response = httpx.post(f"{base_url}/chat/completions", content=chunks())
    assert "content-length" not in response.request.headers  # really chunked
    assert_openai_error(response, 413)


def test_unknown_path_and_wrong_method(base_url: str) -> None:
    response = httpx.get(f"{base_url}/embeddingz")
    assert "No such endpoint" in assert_openai_error(response, 404)
    response = httpx.get(f"{base_url}/chat/completions")
    assert "not allowed" in assert_openai_error(response, 405)


def nested(depth: int) -> str:
    """A chat body with an extra field ``depth`` levels of arrays and objects deep."""
    inner = "[" * (depth // 2) + '{"a":' * (depth - depth // 2) + "1"
    inner += "}" * (depth - depth // 2) + "]" * (depth // 2)
    return '{"model": "ok", "messages": [{"role": "user", "content": "hi"}], "x": ' + inner + "}"


@pytest.mark.parametrize("depth", [254, 400, 1022, 1100])
def test_body_too_deep_to_pass_on_is_400(base_url: str, depth: int) -> None:
    # orjson reads 1,024 levels but writes 254: deeper bodies used to reach the upstream call
    # and fail there with a 500.
    message = assert_openai_error(post(base_url, nested(depth)), 400)
    assert "nested too deeply" in message or "not valid JSON" in message


def test_body_deep_but_writable_is_answered(base_url: str) -> None:
    assert post(base_url, nested(250)).status_code == 200
