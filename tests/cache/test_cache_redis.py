"""The response cache in Redis (`state`): two replicas share what either kept, and a Redis
that goes away never fails a request (the cache is skipped)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from nobusy.testing.fake_upstream import answer_text
from tests.conftest import Process, free_port, serve
from tests.redis_server import RedisServer

CONFIG = """
upstreams:
  fake: {{kind: openai, base_url: "{fake}/v1", default_model: ok}}
models:
  cached: {{routes: [fake/ok], cache: {{enabled: true}}}}
"""


@pytest.fixture(scope="module")
def pair(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Process], RedisServer]]:
    tmp = tmp_path_factory.mktemp("cache-redis")
    redis = RedisServer(tmp, free_port()).start()  # its own: one test stops it
    started: list[Process] = []
    try:
        for name in ("r1", "r2"):
            (tmp / name).mkdir()
            env = {"NOBUSY_STATE": redis.url, "NOBUSY_REPLICA_ID": name}
            started.append(serve(tmp / name, CONFIG.format(fake=fake_upstream.url), env=env))
        yield started, redis
    finally:
        for process in started:
            process.stop()
        redis.stop()


def ask(replica: Process, text: str) -> httpx.Response:
    with openai.OpenAI(base_url=replica.url + "/v1", api_key="unused", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="cached", messages=[{"role": "user", "content": text}], temperature=0
        )
        return raw.http_response


def test_a_replica_answers_from_what_another_kept(pair: tuple[list[Process], RedisServer]) -> None:
    (first, second), _ = pair
    assert ask(first, "kept on r1").headers["x-nobusy-cache"] == "miss"
    for _ in range(50):  # the write to Redis goes in the background, after the answer
        answer = ask(second, "kept on r1")
        if answer.headers["x-nobusy-cache"] == "hit":
            break
    assert answer.headers["x-nobusy-cache"] == "hit"
    content = answer.json()["choices"][0]["message"]["content"]
    assert content == answer_text([{"role": "user", "content": "kept on r1"}])


def test_redis_away_never_fails_a_request(pair: tuple[list[Process], RedisServer]) -> None:
    (first, _), redis = pair
    redis.stop()
    try:
        for text in ("asked while redis is away", "asked while redis is away"):
            answer = ask(first, text)
            assert answer.status_code == 200
            assert answer.json()["choices"][0]["message"]["content"]
    finally:
        redis.start()
