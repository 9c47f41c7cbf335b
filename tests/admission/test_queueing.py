"""Under overload nobusy queues, overflows and refuses early instead of pushing upstreams over.

A fake upstream with 4 slots (503 "Server busy" beyond them, like DeepSeek) and a spare one.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nobusy.testing.fake_upstream import answer_text
from tests.conftest import Process, free_port, serve, start_process

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def busy_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    port = free_port()
    log = tmp_path_factory.mktemp("busy") / "fake.log"
    args = ["fake-upstream", "--port", str(port), "--capacity", "4", "--chunk-delay", "0.04"]
    process = start_process(args, "/healthz", log, port)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def terse_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """4 slots, and a plain 503 beyond them: no Retry-After, as DeepSeek's "server busy"."""
    port = free_port()
    log = tmp_path_factory.mktemp("terse") / "fake.log"
    args = [
        "fake-upstream",
        "--port",
        str(port),
        "--capacity",
        "4",
        "--chunk-delay",
        "0.04",
        "--retry-after",
        "-1",
    ]
    process = start_process(args, "/healthz", log, port)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def queueing_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """4 slots, and a queue beyond them, as a local vLLM or llama.cpp server."""
    port = free_port()
    log = tmp_path_factory.mktemp("queueing") / "fake.log"
    args = ["fake-upstream", "--port", str(port), "--capacity", "4", "--queue"]
    process = start_process([*args, "--chunk-delay", "0.04"], "/healthz", log, port)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway4(
    busy_fake: Process,
    fake_upstream: Process,
    terse_fake: Process,
    queueing_fake: Process,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("admission")
    config = f"""
initial_concurrency: 16
upstreams:
  tight: {{kind: openai, base_url: "{busy_fake.url}/v1", default_model: ok, max_concurrency: 4}}
  learner: {{kind: openai, base_url: "{busy_fake.url}/v1", default_model: ok,
             circuit: {{consecutive_failures: 1000, failure_rate: 1.0}}}}
  spare: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
  untold: {{kind: openai, base_url: "{terse_fake.url}/v1", default_model: ok}}
  local: {{kind: openai, base_url: "{queueing_fake.url}/v1", default_model: ok}}
  broken: {{kind: openai, base_url: "{fake_upstream.url}/v1",
            default_model: "http503:fail_every=2,retry_after=-1"}}
  lonely: {{kind: openai, base_url: "{fake_upstream.url}/v1",
            default_model: "http503:fail_every=2,retry_after=-1"}}
models:
  local: [local]
  broken: [broken, spare]
  lonely: [lonely]
  untold: [untold]
  tight: [tight]
  overflowing: {{routes: [tight], overflow: [spare]}}
  learning: [learner, spare]
"""
    process = serve(tmp, config)
    yield process
    process.stop()


def post(gateway: Process, model: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers=headers,
        timeout=60,
        json={"model": model, "messages": MESSAGES},
    )


def burst(gateway: Process, model: str, n: int) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: post(gateway, model), range(n)))


def reset(fake: Process) -> None:
    httpx.post(f"{fake.url}/_fake/reset").raise_for_status()


def wait_until(gateway: Process, in_flight: int, queued: int = 0) -> None:
    """Until ``gateway`` holds ``in_flight`` attempts on `tight` and ``queued`` requests wait:
    a fixed sleep was too short on a loaded machine, and the next request then found a free
    slot instead of the queue the test is about."""
    want = {
        'nobusy_upstream_in_flight{upstream="tight"}': float(in_flight),
        'nobusy_queue_depth{priority="normal"}': float(queued),
    }
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = httpx.get(f"{gateway.url}/metrics").text
        seen = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.split(" ")[0] in want)
        if all(float(seen.get(name, "0")) >= value for name, value in want.items()):
            return
        time.sleep(0.01)
    raise AssertionError(f"the gateway never reached {want}")


def test_a_burst_three_times_capacity_is_queued_not_rejected(
    gateway4: Process, busy_fake: Process
) -> None:
    reset(busy_fake)
    responses = burst(gateway4, "tight", 12)
    assert [r.status_code for r in responses] == [200] * 12
    assert all(
        r.json()["choices"][0]["message"]["content"] == answer_text(MESSAGES) for r in responses
    )
    stats = httpx.get(f"{busy_fake.url}/_fake/stats").json()
    assert stats["rejected"] == 0  # nobusy never pushed it past its 4 slots
    assert stats["max_in_flight"] <= 4
    assert stats["requests"] == 12


def test_streaming_client_is_told_its_place_in_the_queue(
    gateway4: Process, busy_fake: Process
) -> None:
    reset(busy_fake)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        blockers = [pool.submit(post, gateway4, "tight") for _ in range(4)]
        wait_until(gateway4, in_flight=4)  # the four slots taken
        lines: list[str] = []
        body = {"model": "tight", "messages": MESSAGES, "stream": True}
        with httpx.stream(
            "POST",
            f"{gateway4.url}/v1/chat/completions",
            json=body,
            headers={"x-nobusy-check": "ads"},
            timeout=60,
        ) as response:
            assert response.status_code == 200
            lines = list(response.iter_lines())
        assert all(b.result().status_code == 200 for b in blockers)
    comments = [line for line in lines if line.startswith(": nobusy: queued, position")]
    assert comments, lines[:5]
    # A stream that waited still ends with the ad check it asked for, before [DONE].
    ads = [line for line in lines if line.startswith(": nobusy-ads ")]
    assert len(ads) == 1 and lines.index(ads[0]) < lines.index("data: [DONE]")
    assert json.loads(ads[0][len(": nobusy-ads ") :])["verdict"] == "clean"
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in lines
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )
    assert text == answer_text(MESSAGES)


def test_impatient_request_is_refused_at_once_with_retry_after(
    gateway4: Process, busy_fake: Process
) -> None:
    reset(busy_fake)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        blockers = [pool.submit(post, gateway4, "tight") for _ in range(6)]
        wait_until(gateway4, in_flight=4, queued=2)  # the four slots taken, two waiting
        refused = post(gateway4, "tight", **{"x-nobusy-max-wait": "0"})
        assert all(b.result().status_code == 200 for b in blockers)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1


def test_bad_patience_header_is_a_400(gateway4: Process) -> None:
    burst_size = 5
    with concurrent.futures.ThreadPoolExecutor(burst_size) as pool:
        blockers = [pool.submit(post, gateway4, "tight") for _ in range(burst_size)]
        time.sleep(0.15)
        bad = post(gateway4, "tight", **{"x-nobusy-max-wait": "soon"})
        [b.result() for b in blockers]
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "x-nobusy-max-wait"


def test_overflow_takes_the_excess_and_says_so(gateway4: Process, busy_fake: Process) -> None:
    reset(busy_fake)
    responses = burst(gateway4, "overflowing", 10)
    assert all(r.status_code == 200 for r in responses)
    upstreams = [r.headers["x-nobusy-upstream"] for r in responses]
    assert "spare (overflow)" in upstreams
    assert "tight" in upstreams
    assert httpx.get(f"{busy_fake.url}/_fake/stats").json()["rejected"] == 0


def test_adaptive_limit_learns_the_real_capacity(gateway4: Process, busy_fake: Process) -> None:
    reset(busy_fake)
    for _ in range(3):
        responses = burst(gateway4, "learning", 16)
        assert all(r.status_code == 200 for r in responses)  # 503s went to the spare
    data = httpx.get(f"{gateway4.url}/v1/nobusy/upstreams").json()["data"]
    learner = next(u for u in data if u["name"] == "learner")
    assert learner["concurrency"]["limit"] < 16
    assert learner["concurrency"]["drops"] > 0
    metrics = httpx.get(f"{gateway4.url}/metrics").text
    assert 'nobusy_upstream_concurrency_limit{upstream="learner"}' in metrics


def test_an_upstream_with_no_stated_limit_survives_a_burst(
    gateway4: Process, terse_fake: Process
) -> None:
    # No max_concurrency, default circuit: its 503s teach the adaptive limit; they neither
    # eject the only upstream nor fail the clients, who wait for a slot instead.
    reset(terse_fake)
    responses = burst(gateway4, "untold", 16)
    assert [r.status_code for r in responses] == [200] * 16
    data = httpx.get(f"{gateway4.url}/v1/nobusy/upstreams").json()["data"]
    untold = next(u for u in data if u["name"] == "untold")
    assert untold["state"] == "closed"
    assert untold["concurrency"]["limit"] < 16


def test_an_upstream_busy_at_any_load_is_set_aside(gateway4: Process) -> None:
    # Every other call answered a plain 503, however few are sent: not full but broken. Its
    # limit falls to one, and "busy" for a lone request at a limit of one pauses it, as a
    # Retry-After would; the spare answers everything meanwhile.
    statuses: list[int] = []
    for _ in range(3):
        statuses += [r.status_code for r in burst(gateway4, "broken", 32)]
    assert statuses == [200] * 96
    data = httpx.get(f"{gateway4.url}/v1/nobusy/upstreams").json()["data"]
    broken = next(u for u in data if u["name"] == "broken")
    assert broken["concurrency"]["limit"] == 1
    assert broken["attempts"] < len(statuses) / 2  # without the pauses: about half of them


def test_a_local_server_that_queues_is_found_out_by_its_time_to_first_token(
    gateway4: Process, queueing_fake: Process
) -> None:
    # A local server never says "busy": beyond its 4 slots it queues, and the first token
    # comes later. The limit comes down from 16, so the waiting happens in nobusy's fair
    # queue (with priorities and patience) instead of the server's.
    reset(queueing_fake)
    for _ in range(3):
        assert [r.status_code for r in burst(gateway4, "local", 24)] == [200] * 24
    data = httpx.get(f"{gateway4.url}/v1/nobusy/upstreams").json()["data"]
    local = next(u for u in data if u["name"] == "local")
    assert local["concurrency"]["slowdowns"] > 0
    assert local["concurrency"]["limit"] < 16


def test_a_lone_broken_upstream_is_retried_after_its_pause_never_a_500(
    gateway4: Process,
) -> None:
    # The only route refuses every other call. A request refused at a limit of one waits for
    # the upstream's pause to end and is tried again (first in line); a request arriving
    # during the pause is told 503 with Retry-After. Nothing else.
    statuses: list[int] = []
    for _ in range(3):
        statuses += [r.status_code for r in burst(gateway4, "lonely", 8)]
    assert set(statuses) <= {200, 503}
    assert 200 in statuses
