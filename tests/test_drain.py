"""Graceful drain (``nobusy.edge.drain``) of real ``nobusy serve`` processes told to stop:
running streams finish (or are cut at ``drain_timeout``), new requests and ``/readyz`` get 503
meanwhile, every accepted request has its usage row, and the process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from nobusy.edge.drain import DRAINED, Drain
from nobusy.errors import Draining
from nobusy.store.migrations import DB_NAME
from nobusy.store.usage import UsageRecord
from nobusy.testing.fake_upstream import answer_text
from tests.conftest import Process, serve
from tests.test_operations import log_lines

# A stream of 24 chunks a quarter of a second apart (6 s): long enough to stop the server
# under it; `long` outlasts any test, so only the drain timeout ends it.
CONFIG = """
drain_timeout: {timeout}
upstreams:
  fake: {{kind: openai, base_url: "{fake}"}}
models:
  slow: ["fake/ok:chunk_delay=0.25,tokens=24"]
  long: ["fake/ok:chunk_delay=0.5,tokens=200"]
"""


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture()
def start(fake_upstream: Process, tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start a server with this drain_timeout (and flags); stopped at the end whatever happens."""
    started: list[Process] = []

    def start(timeout: float, *extra: str) -> Process:
        config = CONFIG.format(timeout=timeout, fake=f"{fake_upstream.url}/v1")
        started.append(serve(tmp_path, config, *extra))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def stream(server: Process, model: str) -> Iterator[str]:
    """The request id, then each SSE line of a streamed answer as it arrives."""
    body = {"model": model, "stream": True, "messages": MESSAGES}
    url = f"{server.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        assert response.status_code == 200
        yield response.headers["x-request-id"]
        yield from (line for line in response.iter_lines() if line)


def content(lines: list[str]) -> str:
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def usage_row(data_dir: Path, request_id: str) -> dict[str, object] | None:
    with closing(sqlite3.connect(data_dir / DB_NAME)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchone()
    return None if row is None else dict(row)


async def test_a_drain_refuses_new_requests_waits_for_running_ones_and_cuts_the_rest() -> None:
    drain = Drain(timeout=0.2)
    answered, late = UsageRecord("a", "m", True), UsageRecord("b", "m", True)

    async def request(record: UsageRecord, done: asyncio.Event) -> None:
        drain.check()
        task = drain.enter(record)
        try:
            await done.wait()
        finally:
            drain.leave(task)

    finish = asyncio.Event()
    first = asyncio.create_task(request(answered, finish))
    second = asyncio.create_task(request(late, asyncio.Event()))  # never finishes by itself
    await asyncio.sleep(0)
    draining = asyncio.create_task(drain.run("test"))
    await asyncio.sleep(0)
    with pytest.raises(Draining):
        drain.check()
    finish.set()
    await draining
    assert first.done() and not first.cancelled() and answered.outcome == "ok"
    assert second.cancelled() and late.outcome == DRAINED


def test_sigterm_lets_a_running_stream_finish_and_refuses_new_requests(
    start: Callable[..., Process],
) -> None:
    server = start(20)
    lines = stream(server, "slow")
    request_id = next(lines)
    received = [next(lines)]  # the answer has begun
    server.proc.send_signal(signal.SIGTERM)
    assert log_lines(server, r"INFO nobusy draining \(SIGTERM, process \d+\)")

    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    body = {"model": "slow", "messages": [{"role": "user", "content": "too late"}]}
    refused = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json() == {
        "error": {
            "message": "This server is restarting and takes no new requests; retry.",
            "type": "service_unavailable",
            "param": None,
            "code": "draining",
        }
    }
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "nobusy_draining 1.0" in metrics

    received += list(lines)
    assert received[-1] == "data: [DONE]" and content(received) == answer_text(MESSAGES, 24)
    assert server.proc.wait(20) == 0
    assert log_lines(server, r"drained in .*: 1 request waited for, 1 finished, 0 cut")
    row = usage_row(server.data_dir, request_id)
    assert row is not None and row["outcome"] == "ok" and row["completion_tokens"] == 24


def test_requests_longer_than_drain_timeout_are_cut_and_still_billed(
    start: Callable[..., Process],
) -> None:
    server = start(1)
    lines = stream(server, "long")
    request_id = next(lines)
    received = [next(lines)]
    body = {"model": "long", "messages": MESSAGES}
    with ThreadPoolExecutor(1) as pool:  # and one not streamed, still waiting for its answer
        waiting = pool.submit(
            httpx.post, f"{server.url}/v1/chat/completions", json=body, timeout=30
        )
        while (
            'nobusy_in_flight_requests{alias="long"} 2.0'
            not in httpx.get(f"{server.url}/metrics").text
        ):
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        received += list(lines)
        cut = waiting.result()

    last = json.loads(received[-1].removeprefix("data: "))
    assert last["error"]["code"] == "draining"  # the stream ends with an error, not [DONE]
    assert "data: [DONE]" not in received
    assert cut.status_code == 503 and cut.json()["error"]["code"] == "draining"
    assert cut.headers["retry-after"] == "1"
    assert server.proc.wait(20) == 0
    assert log_lines(server, r"drained in .*: 2 requests waited for, 0 finished, 2 cut")
    row = usage_row(server.data_dir, request_id)
    assert row is not None and row["outcome"] == "drained"
    assert isinstance(row["completion_tokens"], int) and row["completion_tokens"] >= 1
    row = usage_row(server.data_dir, cut.headers["x-request-id"])
    assert row is not None and row["outcome"] == "drained" and not row["stream"]


def test_every_worker_drains(start: Callable[..., Process]) -> None:
    """With --workers 2 uvicorn's parent passes SIGTERM to each worker, which drains."""
    server = start(20, "--workers", "2")
    while server.log.read_text().count("Application startup complete") < 2:
        time.sleep(0.05)  # both workers serving (the test's timeout bounds the wait)
    lines = stream(server, "slow")
    request_id = next(lines)
    received = [next(lines)]
    server.proc.send_signal(signal.SIGTERM)
    received += list(lines)

    assert received[-1] == "data: [DONE]"
    assert server.proc.wait(20) == 0
    assert len(log_lines(server, r"drained in ")) == 2
    row = usage_row(server.data_dir, request_id)
    assert row is not None and row["outcome"] == "ok" and row["completion_tokens"] == 24
