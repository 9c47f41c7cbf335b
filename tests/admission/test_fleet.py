"""Two real `nobusy serve` replicas on one Redis (with a password): a key's token quota holds
for both together; every replica, and the health of Redis, shows on the status board, in
`/metrics`, in `/readyz` and in `nobusy check`, and the password shows nowhere, even while
Redis is away."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from nobusy.store.migrations import DB_NAME
from tests.admission.test_keys_e2e import make_key
from tests.admission.test_replicas import CONFIG, replicas, wait_for
from tests.conftest import Process, free_port, serve
from tests.redis_server import RedisServer

PASSWORD = "s3cret-quota-pw"  # noqa: S105


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    folder = tmp_path_factory.mktemp("redis-pw")
    server = RedisServer(folder, free_port(), "--requirepass", PASSWORD).start()
    yield server
    server.stop()


def url_of(server: RedisServer) -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"


@pytest.fixture(scope="module")
def pair(
    fake_upstream: Process, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Process], list[str]]]:
    tmp = tmp_path_factory.mktemp("fleet")
    keys = (("--name", "prepaid", "--quota-tokens", "100"),)
    started, secrets = replicas(tmp, fake_upstream, url_of(own_redis), *keys)
    yield started, secrets
    for process in started:
        process.stop()


def post(replica: Process, secret: str) -> httpx.Response:
    return httpx.post(
        f"{replica.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "ok", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )


def spent(process: Process) -> int:
    with closing(sqlite3.connect(process.data_dir / DB_NAME)) as db:
        row = db.execute("SELECT SUM(prompt_tokens + completion_tokens) FROM usage").fetchone()
    return int(row[0] or 0)


def test_a_quota_holds_across_replicas(pair: tuple[list[Process], list[str]]) -> None:
    """100 tokens; each answer costs 13 (1 in, 12 out), one request at a time: 8 answers over
    both replicas together (91 spent before the 8th, 104 after), where each replica alone,
    with its own copy of the balance, would give 8."""
    started, (secret,) = pair
    answered = refused = i = 0
    while refused < 4:  # a refusal may come while the last reservation is still held: retry
        response = post(started[i % 2], secret)
        i += 1
        if response.status_code == 200:
            answered, refused = answered + 1, 0
            continue
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "insufficient_quota"
        refused += 1
        time.sleep(0.25)
    assert answered == 8
    wait_for(lambda: spent(started[0]) + spent(started[1]) == 104)
    assert spent(started[0]) and spent(started[1])  # both replicas served some


def test_every_replica_shows(pair: tuple[list[Process], list[str]]) -> None:
    started, _ = pair
    one, two = started

    def both_seen() -> bool:
        text = httpx.get(f"{one.url}/metrics").text
        return all(f'nobusy_replica_in_flight{{replica="{r}"}}' in text for r in ("r1", "r2"))

    wait_for(both_seen)
    text = httpx.get(f"{one.url}/metrics").text
    assert 'nobusy_backend_up{backend="redis"} 1.0' in text
    assert 'nobusy_replica_queue_depth{replica="r2"} 0.0' in text
    assert 'nobusy_replica_last_seen_seconds{replica="r2"}' in text
    status = httpx.get(f"{two.url}/v1/nobusy/status").json()
    assert status["replica"] == "r2"
    assert [r["id"] for r in status["replicas"]] == ["r1", "r2"]
    assert all(r["draining"] is False and r["last_seen"] < 10 for r in status["replicas"])
    (redis,) = status["backends"]
    assert redis["backend"] == "redis" and redis["status"] == "ok"
    assert redis["url"] == f"redis://:***@127.0.0.1:{redis['url'].rsplit(':', 1)[1]}"
    ready = httpx.get(f"{one.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["backends"][0]["status"] == "ok" and "degraded" not in ready.json()


def check(config: Path, url: str) -> subprocess.CompletedProcess[str]:
    """`nobusy check` with ``url`` as ``state`` (wide: no wrapped cells)."""
    return subprocess.run(
        [sys.executable, "-m", "nobusy", "check", "--config", str(config)]
        + ["--url", f"http://127.0.0.1:{free_port()}"],
        env={**os.environ, "NOBUSY_STATE": url, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_redis_away_is_degraded_and_the_password_never_shows(
    fake_upstream: Process, tmp_path: Path
) -> None:
    own = RedisServer(tmp_path, free_port(), "--requirepass", PASSWORD).start()
    started: list[Process] = []
    try:
        secret = make_key(tmp_path / "data", "--name", "rpm", "--rpm", "100")
        env = {"NOBUSY_STATE": url_of(own), "NOBUSY_REPLICA_ID": "solo"}
        started.append(one := serve(tmp_path, CONFIG.format(fake=fake_upstream.url), env=env))
        config = tmp_path / "nobusy.yaml"
        said = check(config, url_of(own))
        assert said.returncode == 0, said.stdout + said.stderr
        assert "Shared backends" in said.stdout and "ok" in said.stdout
        assert "replica(s) beating" in said.stdout
        own.stop()
        wait_for(lambda: 'nobusy_backend_up{backend="redis"} 0.0' in get(one, "/metrics"))
        assert post(one, secret).status_code == 200  # served, with local limits
        ready = httpx.get(f"{one.url}/readyz")
        assert ready.status_code == 200  # degraded, still ready
        body = ready.json()
        assert body["status"] == "ready" and body["degraded"] == ["redis"]
        (redis,) = body["backends"]
        assert redis["status"] == "degraded" and "key limits local" in redis["detail"]
        assert redis["since"] is not None
        down = check(config, url_of(own))
        assert down.returncode == 1
        assert "down" in down.stdout and "does not answer" in down.stdout
        seen = [get(one, "/metrics"), ready.text, get(one, "/v1/nobusy/status")]
        seen.append(down.stdout + down.stderr)
        own.start()
        wait_for(lambda: 'nobusy_backend_up{backend="redis"} 1.0' in get(one, "/metrics"))
        wrong = check(config, url_of(own).replace(PASSWORD, "wrong-" + PASSWORD))
        assert wrong.returncode == 1 and "credentials" in wrong.stdout
        seen.append(wrong.stdout + wrong.stderr)
    finally:
        for process in started:
            process.stop()
        own.stop()
    seen += [process.log.read_text() for process in started]
    for text in seen:
        assert PASSWORD not in text


def get(process: Process, path: str) -> str:
    return httpx.get(f"{process.url}{path}").text
