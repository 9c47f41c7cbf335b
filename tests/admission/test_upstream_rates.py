"""An upstream's own rpm and tpm, end to end: a real `nobusy serve` in front of fake upstreams
sends an upstream no more than its ceiling and the rest to the next route; two replicas on
one Redis hold the ceiling together."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.admission.test_replicas import replicas
from tests.conftest import Process, free_port, serve, start_fake
from tests.redis_server import RedisServer

CONFIG = """
upstreams:
  capped: {{kind: openai, base_url: "{capped}/v1", default_model: ok, rpm: 3}}
  metered: {{kind: openai, base_url: "{metered}/v1", default_model: ok, tpm: 100}}
  spare: {{kind: openai, base_url: "{spare}/v1", default_model: ok}}
models:
  capped: [capped/ok, spare/ok]
  metered: [metered/ok, spare/ok]
  alone: [capped/ok]
"""

FLEET = """
upstreams:
  shared{n}: {{kind: openai, base_url: "{fake}/v1", default_model: ok, rpm: 4}}
  spare: {{kind: openai, base_url: "{spare}/v1", default_model: ok}}
models:
  capped: [shared{n}/ok, spare/ok]
"""


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Process]]:
    """One fake per upstream: each one's counters count only its own calls."""
    started: dict[str, Process] = {}
    try:
        for name in ("capped", "metered", "spare"):
            started[name] = start_fake(tmp_path_factory.mktemp(f"rates-{name}"))
        yield started
    finally:
        for process in started.values():
            process.stop()


def calls(process: Process) -> int:
    counts: dict[str, int] = httpx.get(f"{process.url}/_fake/stats").json()
    return counts["requests"]


def ask(
    server: Process, model: str, secret: str = "", stream: bool = False, patience: float = 30
) -> httpx.Response:
    headers = {"x-nobusy-max-wait": str(patience)}
    if secret:
        headers["authorization"] = f"Bearer {secret}"
    body = {"model": model, "stream": stream, "max_tokens": 20}
    body["messages"] = [{"role": "user", "content": "hi"}]
    if stream:
        body["stream_options"] = {"include_usage": True}
    return httpx.post(f"{server.url}/v1/chat/completions", headers=headers, json=body, timeout=30)


def used(response: httpx.Response) -> int:
    """The tokens an answer's upstream reported, streamed or not."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        return int(response.json()["usage"]["total_tokens"])
    total = 0
    for line in response.text.splitlines():
        if line.startswith("data: {") and '"usage"' in line:
            total += httpx.Response(200, content=line[6:]).json()["usage"]["total_tokens"]
    return total


@pytest.fixture(scope="module")
def gateway(
    fakes: dict[str, Process], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    config = CONFIG.format(**{name: p.url for name, p in fakes.items()})
    process = serve(tmp_path_factory.mktemp("rates"), config)
    yield process
    process.stop()


def test_an_upstream_gets_its_rpm_and_the_rest_go_to_the_next_route(
    gateway: Process, fakes: dict[str, Process]
) -> None:
    before = calls(fakes["capped"]), calls(fakes["spare"])
    answers = [ask(gateway, "capped") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    served = [a.headers["x-nobusy-upstream"].split("/")[0] for a in answers]
    assert served == ["capped"] * 3 + ["spare"] * 3
    assert calls(fakes["capped"]) == before[0] + 3 and calls(fakes["spare"]) == before[1] + 3
    # With no other route, a request waits for the window (a minute): refused at once, as
    # any wait longer than its patience, and the upstream is not called.
    refused = ask(gateway, "alone", patience=2)
    assert refused.status_code == 429
    assert calls(fakes["capped"]) == before[0] + 3
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'nobusy_upstream_window_requests{upstream="capped"} 3.0' in metrics


def test_the_tokens_an_upstream_serves_stay_within_its_tpm(
    gateway: Process, fakes: dict[str, Process]
) -> None:
    answers = [ask(gateway, "metered", stream=i % 2 == 1) for i in range(12)]
    assert [a.status_code for a in answers] == [200] * 12
    served = [a.headers["x-nobusy-upstream"].split("/")[0] for a in answers]
    metered = sum(
        used(a) for a, upstream in zip(answers, served, strict=True) if upstream == "metered"
    )
    # Each answer uses 13 tokens but is sent counted at its estimate (about 40): the window
    # holds the answers' usage once they end, and the next estimate must fit beside it.
    assert all(used(a) == 13 for a in answers)  # "hi" and 12 pieces, by the fake's count
    assert 0 < metered <= 100
    # Without the corrections, two estimates would fill the window; with them, more fit, and
    # once it is full every later request goes to the spare.
    first = served.index("spare")
    assert first >= 3 and served[first:] == ["spare"] * (12 - first)
    assert calls(fakes["metered"]) == served.count("metered")


def test_two_replicas_hold_an_upstreams_rpm_together(
    fakes: dict[str, Process], redis_server: RedisServer, tmp_path: Path
) -> None:
    # Its own upstream name in the session's Redis: a window of its own.
    config = FLEET.replace("{n}", str(free_port())).replace("{spare}", fakes["spare"].url)
    capped = fakes["capped"]
    started, (secret,) = replicas(
        tmp_path, capped, redis_server.url, ("--name", "k"), config=config
    )
    try:
        before = calls(capped)
        answers = [ask(started[i % 2], "capped", secret) for i in range(10)]
        assert [a.status_code for a in answers] == [200] * 10
        assert calls(capped) == before + 4  # 4 a minute, for both replicas together
        assert sum(a.headers["x-nobusy-upstream"].split("/")[0] == "spare" for a in answers) == 6
    finally:
        for process in started:
            process.stop()
