"""Content a route cannot take is routed around: an image skips text-only routes in every
protocol (chat, Messages, Responses), and with no route left the client gets a 400 naming why
in its protocol's error shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Process, openai_client, serve

CONFIG = """
upstreams:
  text: {{kind: openai, base_url: "{fake}", default_model: ok, vision: false}}
  seeing: {{kind: openai, base_url: "{fake}", default_model: ok}}
models:
  mixed: [text, seeing]
  textonly: [text, {{route: seeing/ok, vision: false}}]
  overflowing: {{routes: [text], overflow: [seeing]}}
"""
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
URL = f"data:image/png;base64,{PNG}"


@pytest.fixture(scope="module")
def gateway(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("capabilities")
    process = serve(tmp, CONFIG.format(fake=f"{fake_upstream.url}/v1"))
    yield process
    process.stop()


def chat(gateway: Process, model: str, image: bool) -> Any:
    content: list[Any] = [{"type": "text", "text": "What is this?"}]
    if image:
        content.append({"type": "image_url", "image_url": {"url": URL}})
    client = openai_client(gateway.url + "/v1")
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}]
    )


@pytest.mark.parametrize("model", ["mixed", "overflowing"])
def test_chat_image_skips_the_text_only_route(gateway: Process, model: str) -> None:
    # With its main routes text-only, the overflow route is the one left.
    assert chat(gateway, model, image=True).headers["x-nobusy-upstream"].startswith("seeing")


def test_chat_text_still_takes_the_first_route(gateway: Process) -> None:
    assert chat(gateway, "mixed", image=False).headers["x-nobusy-upstream"] == "text"


def test_chat_image_with_no_route_that_sees_is_a_400(gateway: Process) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(gateway, "textonly", image=True)
    error: Any = caught.value.body
    assert error["param"] == "messages"
    assert "takes images" in error["message"] and "vision: true" in error["message"]


def messages_body(model: str) -> dict[str, Any]:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    content = [{"type": "text", "text": "What is this?"}, image]
    return {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": content}]}


def test_messages_image_is_routed_around_and_refused_in_anthropics_shape(
    gateway: Process,
) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    try:
        raw = client.messages.with_raw_response.create(**messages_body("mixed"))
        assert raw.headers["x-nobusy-upstream"] == "seeing"
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(**messages_body("textonly"))
    finally:
        client.close()
    body: Any = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "vision: true" in body["error"]["message"]


def test_responses_image_is_routed_around_and_refused_in_openais_shape(
    gateway: Process,
) -> None:
    content = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": URL},
    ]
    items: Any = [{"role": "user", "content": content}]
    client = openai_client(gateway.url + "/v1")
    raw = client.responses.with_raw_response.create(model="mixed", input=items, store=False)
    assert raw.headers["x-nobusy-upstream"] == "seeing"
    response = httpx.post(gateway.url + "/v1/responses", json={"model": "textonly", "input": items})
    assert response.status_code == 400
    assert "vision: true" in response.json()["error"]["message"]
