"""The Responses API's kept responses in PostgreSQL (`store`): two replicas on one database,
a conversation started on one continued, read and deleted on the other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from nobusy.testing.fake_upstream import answer_text
from tests.conftest import Process, serve
from tests.postgres_server import PostgresServer

CONFIG = """
upstreams:
  fake: {{kind: openai, base_url: "{fake}/v1", default_model: ok}}
models:
  ok: [fake/ok]
"""


@pytest.fixture(scope="module")
def fleet(
    fake_upstream: Process,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Process]]:
    url = postgres_server.new_database("responses")
    tmp: Path = tmp_path_factory.mktemp("pg-responses")
    started: list[Process] = []
    try:
        for name in ("r1", "r2"):
            (tmp / name).mkdir()
            env = {"NOBUSY_STORE": url, "NOBUSY_REPLICA_ID": name}
            started.append(serve(tmp / name, CONFIG.format(fake=fake_upstream.url), env=env))
        yield started
    finally:
        for process in started:
            process.stop()


def client(replica: Process) -> openai.OpenAI:
    return openai.OpenAI(base_url=replica.url + "/v1", api_key="unused", max_retries=0)


def test_a_conversation_continues_on_another_replica(fleet: list[Process]) -> None:
    first, second = (client(replica) for replica in fleet)
    made = first.responses.create(model="ok", input="remember the blue door")
    assert second.responses.retrieve(made.id).output_text == made.output_text
    follow = second.responses.create(
        model="ok", input="which door?", previous_response_id=made.id, stream=True
    )
    done = [e.response for e in follow if e.type == "response.completed"]
    assert done and done[0].output_text == answer_text([{"role": "user", "content": "which door?"}])
    # The second answer's conversation holds the first: continued again on the first replica.
    third = first.responses.create(model="ok", input="and now?", previous_response_id=done[0].id)
    assert third.output_text
    second.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        first.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        first.responses.create(model="ok", input="again", previous_response_id=made.id)
