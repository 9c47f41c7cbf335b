"""Two `nobusy serve` replicas on one Redis share their view of the upstreams: one ceiling for
both, a Retry-After seen by one obeyed by the other, and a flooding key on one replica does
not take the slots a quiet key on the other needs."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.admission.test_replicas import replicas, wait_for
from tests.conftest import Process, start_fake
from tests.redis_server import RedisServer

CONFIG = """
upstreams:
  four: {{kind: openai, base_url: "{fake}/v1", default_model: ok, max_concurrency: 4}}
  pausing: {{kind: openai, base_url: "{fake}/v1", default_model: ok}}
models:
  slow: ["four/ok:delay=1"]
  slower: ["four/ok:delay=5"]
  paused: ["pausing/http429"]
"""


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """This module's own fake upstream: its counters count only these tests' requests."""
    process = start_fake(tmp_path_factory.mktemp("fleet-fake"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def pair(
    fake: Process, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Process], list[str]]]:
    tmp = tmp_path_factory.mktemp("fleet")
    keys = (("--name", "flood"), ("--name", "quiet"))
    started, secrets = replicas(tmp, fake, redis_server.url, *keys, config=CONFIG)
    yield started, secrets
    for process in started:
        process.stop()


def stats(fake: Process) -> dict[str, int]:
    counts: dict[str, int] = httpx.get(f"{fake.url}/_fake/stats").json()
    return counts


def ask(
    replica: Process, secret: str, model: str, stream: bool = False, patience: float = 60
) -> httpx.Response:
    return httpx.post(
        f"{replica.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {secret}", "x-nobusy-max-wait": str(patience)},
        json={"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )


def test_a_retry_after_seen_by_one_replica_is_obeyed_by_the_other(
    pair: tuple[list[Process], list[str]], fake: Process
) -> None:
    (one, two), (secret, _) = pair
    before = stats(fake)["requests"]
    assert ask(one, secret, "paused").status_code >= 400  # 429, Retry-After: 30
    assert stats(fake)["requests"] == before + 1
    metric = 'nobusy_upstream_circuit_state{state="open",upstream="pausing"} 1.0'
    wait_for(lambda: metric in httpx.get(f"{two.url}/metrics").text, timeout=2)
    answer = ask(two, secret, "paused")
    assert answer.status_code >= 400
    assert stats(fake)["requests"] == before + 1  # the other replica did not call it


def test_a_flood_on_one_replica_leaves_a_quiet_key_on_the_other_its_slot(
    pair: tuple[list[Process], list[str]], fake: Process
) -> None:
    (one, two), (flood, quiet) = pair
    httpx.post(f"{fake.url}/_fake/reset")
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        # Ten requests a second, each holding a slot for a second: ten slots' worth on four.
        floods = []
        for _ in range(10):
            floods.append(pool.submit(ask, one, flood, "slow", patience=3))
            time.sleep(0.1)
        quiet_answers = pool.submit(lambda: [ask(two, quiet, "slow", True) for _ in range(4)])
        while not quiet_answers.done():
            floods.append(pool.submit(ask, one, flood, "slow", patience=3))
            time.sleep(0.1)
        answers = quiet_answers.result()
        results = [f.result() for f in floods]
    assert [a.status_code for a in answers] == [200] * 4
    assert {r.status_code for r in results} <= {200, 429}  # 429: it would wait too long
    # The flood keeps the other slots busy; told at once when its wait would be too long.
    assert sum(r.status_code == 200 for r in results) >= 4
    assert stats(fake)["max_in_flight"] <= 4  # one ceiling for both replicas
    queued = [a.headers["x-nobusy-upstream"] == "queued" for a in answers]
    # The first quiet request may wait for the first slot the flood frees; from then on the
    # flood leaves one slot free for the quiet key, however many of its own requests wait.
    assert sum(queued[1:]) == 0, queued


def test_a_killed_replicas_slots_return(
    fake: Process, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = CONFIG.replace("max_concurrency: 4", "max_concurrency: 2")
    started, (secret,) = replicas(
        tmp_path,
        fake,
        redis_server.url,
        ("--name", "k"),
        config=config,
        env={"NOBUSY_LEASE_TTL": "2"},
    )
    one, two = started
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = [pool.submit(ask, one, secret, "slow") for _ in range(2)]
            wait_for(lambda: stats(fake)["in_flight"] >= 2)
            one.proc.kill()  # kill -9 while it holds both slots
            one.proc.wait()
            for future in held:
                with pytest.raises(httpx.HTTPError):
                    future.result()
        # Within the TTL (2 s here) the other replica has both slots again.
        assert [ask(two, secret, "slow").status_code for _ in range(2)] == [200, 200]
        text = httpx.get(f"{two.url}/metrics").text
        assert 'nobusy_upstream_leases_held{upstream="four"}' in text
    finally:
        for process in started:
            process.stop()


def test_a_replica_that_stops_gives_its_slots_back_at_once(
    fake: Process, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = CONFIG.replace("max_concurrency: 4", "max_concurrency: 2")
    # Slots would outlive a replica by a minute: only giving them back can free them sooner.
    env = {"NOBUSY_LEASE_TTL": "60", "NOBUSY_DRAIN_TIMEOUT": "0.5"}
    started, (secret,) = replicas(
        tmp_path, fake, redis_server.url, ("--name", "k"), config=config, env=env
    )
    one, two = started
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = [pool.submit(ask, one, secret, "slower", True) for _ in range(2)]
            wait_for(lambda: stats(fake)["in_flight"] >= 2)
            one.proc.terminate()  # SIGTERM: drain for 0.5 s, cut both answers, exit
            assert one.proc.wait(10) == 0
            for future in held:
                future.result()  # the streams were cut after their headers
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: ask(two, secret, "slow", True, 5), range(2)))
        assert [a.status_code for a in answers] == [200, 200]
        assert [a.headers["x-nobusy-upstream"] for a in answers] == ["four/ok:delay=1"] * 2
    finally:
        for process in started:
            process.stop()
