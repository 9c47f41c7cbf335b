"""Two `nobusy serve` replicas on one Redis: a key's limits hold for both together, the URL's
password stays out of every message, and limits go local while Redis is away, then back."""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from nobusy.store.migrations import DB_NAME
from tests.admission.test_keys_e2e import make_key
from tests.conftest import Process, free_port, serve
from tests.redis_server import RedisServer

CONFIG = """
upstreams:
  fake: {{kind: openai, base_url: "{fake}/v1", default_model: ok}}
models:
  ok: [fake/ok]
  slow: ["fake/ok:delay=2"]
"""


def replicas(
    tmp: Path,
    fake: Process,
    redis_url: str,
    *keys: tuple[str, ...],
    config: str = CONFIG,
    env: dict[str, str] | None = None,
) -> tuple[list[Process], list[str]]:
    """Keys made in the first replica's data dir and copied to the second's, as a shared key
    store would hold them; then both replicas on the same Redis."""
    first, second = tmp / "r1", tmp / "r2"
    first.mkdir()
    second.mkdir()
    secrets = [make_key(first / "data", *args) for args in keys]
    (second / "data").mkdir()
    source = sqlite3.connect(first / "data" / DB_NAME)
    copy = sqlite3.connect(second / "data" / DB_NAME)
    with closing(source), closing(copy):
        source.backup(copy)
    config = config.format(fake=fake.url)
    started: list[Process] = []
    try:
        for folder in (first, second):
            each = {"NOBUSY_STATE": redis_url, "NOBUSY_REPLICA_ID": folder.name, **(env or {})}
            started.append(serve(folder, config, env=each))
    except BaseException:
        for process in started:
            process.stop()
        raise
    return started, secrets


def post(replica: Process, secret: str, model: str = "ok") -> int:
    response = httpx.post(
        f"{replica.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    return response.status_code


@pytest.fixture(scope="module")
def pair(
    fake_upstream: Process, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Process], list[str]]]:
    tmp = tmp_path_factory.mktemp("replicas")
    keys = (("--name", "rpm", "--rpm", "5"), ("--name", "two", "--max-concurrency", "2"))
    started, secrets = replicas(tmp, fake_upstream, redis_server.url, *keys)
    yield started, secrets
    for process in started:
        process.stop()


def test_rpm_holds_across_replicas(pair: tuple[list[Process], list[str]]) -> None:
    started, (secret, _) = pair
    statuses = [post(started[i % 2], secret) for i in range(12)]
    assert statuses.count(200) == 5  # not 5 per replica
    assert statuses.count(429) == 7


def test_concurrency_holds_across_replicas(pair: tuple[list[Process], list[str]]) -> None:
    started, (_, secret) = pair
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda i: post(started[i % 2], secret, "slow"), range(6)))
    assert sorted(statuses) == [200, 200, 429, 429, 429, 429]
    # Both slots are given back (by a reconciliation each replica sends just after answering).
    wait_for(lambda: post(started[0], secret) == 200)


def test_metrics_name_the_replica(pair: tuple[list[Process], list[str]]) -> None:
    started, _ = pair
    for process in started:
        text = httpx.get(f"{process.url}/metrics").text
        assert f'nobusy_replica_info{{replica="{process.log.parent.name}"}} 1.0' in text
        assert "nobusy_state_shared 1.0" in text


def test_unreachable_redis_at_start_is_a_clear_error_without_the_password(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"redis://:hunter2-password@127.0.0.1:{port}/0"
    result = subprocess.run(
        [sys.executable, "-m", "nobusy", "serve", "--port", str(free_port())]
        + ["--data-dir", str(tmp_path / "data"), "--on-state-failure", "refuse"],
        env={**os.environ, "NOBUSY_STATE": url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in said
    assert "on_state_failure: local" in said and "Traceback" not in said
    assert "hunter2" not in said


def test_limits_go_local_while_redis_is_away_and_come_back(
    fake_upstream: Process, tmp_path: Path
) -> None:
    own = RedisServer(tmp_path, free_port()).start()
    started: list[Process] = []
    try:
        started, (secret,) = replicas(
            tmp_path, fake_upstream, own.url, ("--name", "rpm", "--rpm", "4")
        )
        one, two = started
        shared = "nobusy_state_shared 1.0"
        wait_for(lambda: "nobusy_state_replicas 2.0" in httpx.get(f"{one.url}/metrics").text)
        own.stop()
        wait_for(lambda: "nobusy_state_shared 0.0" in httpx.get(f"{one.url}/metrics").text)
        # 4 per minute over 2 replicas: 2 each, counted locally.
        assert [post(one, secret) for _ in range(3)] == [200, 200, 429]
        own.start()  # empty, as a restarted Redis without persistence
        wait_for(lambda: all(shared in httpx.get(f"{p.url}/metrics").text for p in started))
        statuses = [post(started[i % 2], secret) for i in range(6)]
        assert statuses == [200] * 4 + [429] * 2
        log = one.log.read_text()
        assert log.count("key limits are local now, each limit divided by 2") == 1
        assert log.count("key limits are shared again") == 1
    finally:
        for process in started:
            process.stop()
        own.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)
