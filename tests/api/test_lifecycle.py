"""A request's books close on every path: a failure at any step, or a client that leaves.

In-process first: the app built by ``create_app`` (with a key, the guard, PII masking and the
audit log), in front of the shipped fake upstream, with a failure injected at each step of the
request's path; the in-flight gauge, the key's concurrency slot, the upstream's slots, the
queue and the usage row must all come back. Then over loopback: clients that give up while
their answer is being produced, or while they wait in the queue.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

import nobusy.api.chat as chat_module
import nobusy.protocols.pipeline as pipeline_module
from nobusy.admission.capacity import Ticket
from nobusy.app import create_app
from nobusy.errors import NobusyError, StorageUnavailable
from nobusy.guard.pii import Masker
from nobusy.routing import Walker
from nobusy.routing.relay import ChunkRewriter
from nobusy.settings import load_settings
from nobusy.state import AppState
from nobusy.store.migrations import DB_NAME
from tests.conftest import Process, serve

STEPS = ["parse", "admit", "guard", "pii", "reserve", "enqueue", "queue", "open", "relay"]
BODY = {"model": "ok", "messages": [{"role": "user", "content": "hello there"}]}


def inject(step: str, exc: Exception, state: AppState, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``step`` of the request's path raise ``exc``."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise exc

    async def aboom(*args: Any, **kwargs: Any) -> Any:
        raise exc

    async def gen_boom(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise exc
        yield  # an async generator, as the real ones

    router = state.router
    if step == "parse":
        monkeypatch.setattr(chat_module, "parse_chat_request", boom)
    elif step == "admit":
        assert state.limits is not None
        monkeypatch.setattr(state.limits, "admit", aboom)
    elif step == "guard":
        monkeypatch.setattr(pipeline_module, "check_request", boom)
    elif step == "pii":
        monkeypatch.setattr(Masker, "mask_request", boom)
    elif step == "reserve":
        monkeypatch.setattr(Walker, "reserve", boom)
    elif step == "enqueue":
        monkeypatch.setattr(router.capacity, "try_take", lambda *args, **kwargs: False)
        monkeypatch.setattr(router, "enqueue", boom)
    elif step == "queue":  # a real place in the queue, then the wait fails
        monkeypatch.setattr(router.capacity, "try_take", lambda *args, **kwargs: False)
        monkeypatch.setattr(Ticket, "wait", aboom)
        monkeypatch.setattr(Ticket, "updates", gen_boom)
    elif step == "open":  # the upstream call itself fails (as orjson's depth limit did)
        monkeypatch.setattr(router.upstreams["fake"], "stream", gen_boom)
    elif step == "relay":  # collecting or streaming the answer fails after the first token
        monkeypatch.setattr(ChunkRewriter, "rewrite", boom)
    else:
        raise AssertionError(step)


@pytest.fixture()
def app_client(fake_upstream: Process, tmp_path: Path) -> Iterator[TestClient]:
    words = tmp_path / "words.txt"
    words.write_text("forbiddenword\n")
    config = tmp_path / "nobusy.yaml"
    config.write_text(
        f"""
audit: {{enabled: true, store: full}}
guard:
  lexicons:
    - {{path: "{words}", action: block, scope: both}}
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
models:
  ok: {{routes: [fake/ok], pii: {{enabled: true}}}}
"""
    )
    settings = load_settings(config, env={}, data_dir=tmp_path / "data")
    # A loopback base URL: TestClient's own "testserver" is a host name the edge refuses.
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.nobusy  # type: ignore[attr-defined]
    return state


def in_flight_gauge(client: TestClient) -> float:
    text = client.get("/metrics").text
    match = re.search(r'^nobusy_in_flight_requests\{alias="ok"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def usage_row(state: AppState, data_dir: Path, request_id: str) -> dict[str, Any] | None:
    assert state.ledger.log.flush()
    with closing(sqlite3.connect(data_dir / DB_NAME)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchone()
    return dict(row) if row is not None else None


@pytest.mark.parametrize("stream", [False, True], ids=["collect", "stream"])
@pytest.mark.parametrize(
    "exc",
    [RuntimeError("injected bug"), StorageUnavailable("injected: database locked")],
    ids=["bug", "nobusy-error"],
)
@pytest.mark.parametrize("step", STEPS)
def test_a_failure_at_any_step_closes_the_books(
    app_client: TestClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    exc: Exception,
    stream: bool,
) -> None:
    state = state_of(app_client)
    assert state.keys is not None
    _, secret = state.keys.create("team", max_concurrency=1)
    headers = {"authorization": f"Bearer {secret}"}
    body = {**BODY, "stream": stream}
    with monkeypatch.context() as patch:
        inject(step, exc, state, patch)
        response = app_client.post("/v1/chat/completions", json=body, headers=headers)

    code = exc.code if isinstance(exc, NobusyError) else "internal_error"
    if stream and step in ("queue", "relay"):  # after the headers: an error event
        assert response.status_code == 200
        assert f'"code":"{code}"' in response.text and "[DONE]" not in response.text
    else:
        status = exc.status_code if isinstance(exc, NobusyError) else 500
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert "Traceback" not in response.text and "injected bug" not in response.text

    # Every account is closed: the gauge, the upstream's slots, the queue, the usage row...
    assert in_flight_gauge(app_client) == 0
    assert state.router.capacity.limits["fake"].in_flight == 0
    assert state.router.stats["fake"].in_flight == 0
    assert state.router.capacity.queue.size == 0
    row = usage_row(state, tmp_path / "data", response.headers["x-request-id"])
    if step == "parse":
        assert row is None  # refused before the request counted for anything
    else:
        assert row is not None and row["outcome"] == code
    # ...and the key's one concurrency slot: the next request is answered.
    again = app_client.post("/v1/chat/completions", json=body, headers=headers)
    assert again.status_code == 200, again.text
    assert in_flight_gauge(app_client) == 0


def test_large_bodies_are_parsed_guarded_and_masked_off_the_event_loop(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, str] = {}

    def where(name: str, real: Any) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            threads[name] = threading.current_thread().name
            return real(*args, **kwargs)

        return recorded

    monkeypatch.setattr(
        chat_module, "parse_chat_request", where("parse", chat_module.parse_chat_request)
    )
    monkeypatch.setattr(
        pipeline_module, "check_request", where("guard", pipeline_module.check_request)
    )
    monkeypatch.setattr(Masker, "mask_request", where("pii", Masker.mask_request))
    padding = "call 13800138000 " + "lorem ipsum " * 10_000  # ~120 KB
    big = {"model": "ok", "messages": [{"role": "user", "content": padding}]}
    assert app_client.post("/v1/chat/completions", json=big).status_code == 200
    assert set(threads) == {"parse", "guard", "pii"}
    assert all(name.startswith("nobusy-cpu") for name in threads.values()), threads
    # The checks still hold there: a blocked word in a large body is refused.
    big["messages"][0]["content"] += " forbiddenword"
    response = app_client.post("/v1/chat/completions", json=big)
    assert response.status_code == 400 and response.json()["error"]["code"] == "content_filter"
    threads.clear()
    assert app_client.post("/v1/chat/completions", json=BODY).status_code == 200
    assert not any(name.startswith("nobusy-cpu") for name in threads.values())  # small: inline


# --- Clients that leave, over loopback. --------------------------------------------------------


@pytest.fixture(scope="module")
def leaving(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """Slow answers (about 0.3 s a token), on an upstream that takes one request at a time."""
    tmp = tmp_path_factory.mktemp("leaving")
    config = f"""
upstreams:
  slow: {{kind: openai, base_url: "{fake_upstream.url}/v1", first_token_timeout: 60,
          idle_timeout: 60}}
  one: {{kind: openai, base_url: "{fake_upstream.url}/v1", first_token_timeout: 60,
         idle_timeout: 60, max_concurrency: 1}}
models:
  drip: ["slow/slow:chunk_delay=0.3"]
  single: ["one/slow:chunk_delay=0.3"]
"""
    process = serve(tmp, config)
    yield process
    process.stop()


def rows(process: Process, alias: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(process.data_dir / DB_NAME)) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM usage WHERE alias = ? ORDER BY time", (alias,))
        return [dict(row) for row in found]


def wait_for(check: Any, seconds: float = 15.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def ask(process: Process, alias: str, timeout: float, stream: bool = False) -> None:
    """A client that gives up after ``timeout`` seconds."""
    body = {"model": alias, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    url = process.url + "/v1/chat/completions"
    try:
        if stream:
            with httpx.stream("POST", url, json=body, timeout=timeout) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    assert line.startswith(": nobusy: queued")  # read the queue notice, leave
                    break
        else:
            httpx.post(url, json=body, timeout=timeout)
            raise AssertionError("answered before the client gave up")
    except httpx.TimeoutException:
        pass


def test_non_streaming_client_that_leaves_closes_the_upstream_call(
    leaving: Process, fake_stats: httpx.Client
) -> None:
    ask(leaving, "drip", timeout=1.0)  # the answer takes ~3.6 s
    # nobusy notices at once: the upstream request is closed, the row says client_gone...
    row = wait_for(lambda: rows(leaving, "drip"))
    assert row, "no usage row"
    assert row[0]["outcome"] == "client_gone" and row[0]["upstream"].startswith("slow/")
    assert wait_for(lambda: fake_stats.get("/_fake/stats").json()["in_flight"] == 0)
    # ...and bills what was consumed before the client left.
    assert row[0]["completion_tokens"] >= 1


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
def test_queued_client_that_gives_up_never_reaches_an_upstream(
    leaving: Process, fake_stats: httpx.Client, stream: bool
) -> None:
    before = len(rows(leaving, "single"))
    body = {"model": "single", "messages": [{"role": "user", "content": "hi"}]}
    url = leaving.url + "/v1/chat/completions"
    first = threading.Thread(target=httpx.post, args=(url,), kwargs={"json": body, "timeout": 30})
    # The first request takes the one slot (~3.6 s); the second waits for it, and gives up.
    first.start()
    try:
        assert wait_for(lambda: fake_stats.get("/_fake/stats").json()["in_flight"] == 1)
        ask(leaving, "single", timeout=1.0, stream=stream)
        gone = wait_for(
            lambda: [r for r in rows(leaving, "single")[before:] if r["upstream"] is None]
        )
    finally:
        first.join()
    assert gone and gone[0]["outcome"] == "client_gone"
    # A third request after the first is answered; the one that left was never sent upstream.
    assert httpx.post(url, json=body, timeout=30).status_code == 200
    assert fake_stats.get("/_fake/stats").json()["requests"] == 2
