"""The server's edges: slow clients cut off, departed clients logged and billed, ops endpoints."""

from __future__ import annotations

import json
import pickle
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from nobusy.app import create_app
from nobusy.edge.server import uvicorn_config
from nobusy.settings import load_settings
from nobusy.store.migrations import DB_NAME
from tests.conftest import Process, serve


def test_workers_receive_the_resolved_settings_whole(tmp_path: Path) -> None:
    """No hand list of names: each spawned worker unpickles uvicorn's config, whose app is
    create_app bound to the parent's settings, secrets and all."""
    (tmp_path / "nobusy.yaml").write_text(
        """
upstreams:
  a: {kind: openai, base_url: "http://127.0.0.1:9/v1", api_key: "${A_KEY}", default_model: m}
  local: {kind: embedded}
models:
  m: {routes: [[a/m, {route: local, weight: 3}]], hedge: {after: 0.5}}
audit: {enabled: true, store: hash}
"""
    )
    env = {"A_KEY": "sk-upstream-secret", "NOBUSY_ADMIN_KEY": "admin-secret-0123456789"}
    settings = load_settings(
        tmp_path / "nobusy.yaml", env=env, workers=2, body_deadline=7.5, allowed_hosts="x.test"
    )
    sent = pickle.loads(pickle.dumps(uvicorn_config(settings)))  # as multiprocessing's spawn
    assert sent.factory and sent.app.func is create_app
    (received,) = sent.app.args
    assert received == settings
    assert received.admin_key is not None and settings.admin_key is not None
    assert received.admin_key.get_secret_value() == "admin-secret-0123456789"
    upstream = received.upstreams["a"]
    assert upstream.api_key.get_secret_value() == "sk-upstream-secret"  # type: ignore[attr-defined]
    assert type(upstream) is type(settings.upstreams["a"])


@pytest.fixture(scope="module")
def strict_server(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """A server with one-second header and body timeouts."""
    tmp = tmp_path_factory.mktemp("strict")
    config = f"""
header_timeout: 1
body_timeout: 1
upstreams:
  fake: {{kind: openai, base_url: "http://127.0.0.1:{fake_upstream.port}/v1", default_model: ok}}
"""
    process = serve(tmp, config)
    yield process
    process.stop()


def closed_by_server(sock: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing the socket, or None if it stayed open."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return None
    return data


def test_connections_trickling_headers_are_closed(strict_server: Process) -> None:
    sockets = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", strict_server.port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    for _ in range(3):  # keep trickling: each byte must not extend the deadline
        time.sleep(0.3)
        for sock in sockets:
            try:
                sock.sendall(b"X")
            except OSError:
                pass
    try:
        assert all(closed_by_server(sock, within=10) is not None for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    assert httpx.get(strict_server.url + "/healthz").status_code == 200  # still serving


def test_client_trickling_body_gets_408(strict_server: Process) -> None:
    with socket.create_connection(("127.0.0.1", strict_server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'content-type: application/json\r\ncontent-length: 100\r\n\r\n{"mo'
        )
        answer = closed_by_server(sock, within=10)
    assert answer is not None
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == "request_timeout"


def read_usage(data_dir: Path, request_id: str) -> dict[str, object] | None:
    """The usage row of a request, ``tried`` and ``notes`` decoded; None if not written yet."""
    with closing(sqlite3.connect(data_dir / DB_NAME)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchone()
    if row is None:
        return None
    return dict(row) | {"tried": json.loads(row["tried"]), "notes": json.loads(row["notes"])}


def test_client_leaving_mid_stream_is_logged_and_upstream_cancelled(
    gateway: Process, fake_stats: httpx.Client
) -> None:
    body = {
        "model": "slow",
        "stream": True,
        "messages": [{"role": "user", "content": "take your time"}],
    }
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(4), strict=False)]
        assert received[0].startswith("data: ")
    # The client is gone: nobusy must close the upstream request and still write usage.
    deadline = time.monotonic() + 10
    record = None
    while time.monotonic() < deadline:
        record = read_usage(gateway.data_dir, request_id)
        if record and fake_stats.get("/_fake/stats").json()["in_flight"] == 0:
            break
        time.sleep(0.05)
    assert record is not None
    assert record["outcome"] == "client_gone"
    assert record["upstream"] == "fake/slow"
    assert isinstance(record["completion_tokens"], int) and record["completion_tokens"] >= 1
    assert fake_stats.get("/_fake/stats").json()["in_flight"] == 0


def test_answered_requests_are_in_the_usage_log(gateway: Process) -> None:
    body = {"model": "ok", "messages": [{"role": "user", "content": "log me"}]}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body)
    record = read_usage(gateway.data_dir, response.headers["x-request-id"])
    assert record is not None
    assert record["outcome"] == "ok" and record["prompt_tokens"] == 2
    assert record["completion_tokens"] == 12 and record["tried"] == ["fake"]


def test_health_ready_and_openapi(gateway: Process) -> None:
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/readyz").json()
    assert ready["status"] == "ready" and "fake" in ready["usable"]
    spec = httpx.get(gateway.url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert "/v1/chat/completions" in spec["paths"]


def test_metrics_count_requests_tokens_and_errors(gateway: Process) -> None:
    messages = [{"role": "user", "content": "count me"}]
    httpx.post(gateway.url + "/v1/chat/completions", json={"model": "ok", "messages": messages})
    httpx.post(
        gateway.url + "/v1/chat/completions", json={"model": "alldown", "messages": messages}
    )
    text = httpx.get(gateway.url + "/metrics").text
    assert 'nobusy_requests_total{alias="ok",outcome="ok",upstream="fake/ok"}' in text
    assert 'nobusy_tokens_total{alias="ok",type="completion",upstream="fake/ok"}' in text
    assert 'nobusy_time_to_first_token_seconds_bucket{alias="ok"' in text
    assert 'nobusy_errors_total{alias="alldown",code="all_upstreams_failed"}' in text
    assert (
        'nobusy_upstream_attempts_total{outcome="upstream_unreachable",upstream="refused"}' in text
    )
    assert "sk-test-secret" not in text
