"""What an operator sees: readiness and `check` by real outcomes, and a log that says what
happened, read from the server's own log file."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.test_commands import nobusy
from tests.conftest import Process, free_port, serve

CONFIG = """
max_attempts: 4
retry_budget_min: 1000
{extra}
upstreams:
  fake: {{kind: openai, base_url: "{fake}"}}
  backup: {{kind: openai, base_url: "{fake}", default_model: ok}}
  dead: {{kind: openai, base_url: "http://127.0.0.1:{dead}/v1", default_model: ok,
          circuit: {{consecutive_failures: 1}}}}
  refusing: {{kind: openai, base_url: "http://127.0.0.1:{dead}/v1", default_model: ok}}
  busy: {{kind: openai, base_url: "{fake}", default_model: http503}}
  broken: {{kind: openai, base_url: "{fake}", default_model: "http:status=500",
            circuit: {{consecutive_failures: 1}}}}
models:
  ok: [fake/ok]
  failover: [refusing, backup]
  gone: [dead]
  refused: [refusing]
  drop: ["fake/drop:drop_after=3", backup]
  busy: [busy, backup]
  broken: [broken]
"""


def start(tmp: Path, fake: Process, extra: str = "") -> Process:
    config = CONFIG.format(extra=extra, fake=f"{fake.url}/v1", dead=free_port())
    return serve(tmp, config)


@pytest.fixture(scope="module")
def server(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start(tmp_path_factory.mktemp("ops"), fake_upstream)
    yield process
    process.stop()


def ask(server: Process, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)


def log_lines(server: Process, pattern: str) -> list[str]:
    """Lines of the server's log matching ``pattern``, waiting a moment for them to be written."""
    for _ in range(50):
        found = [line for line in server.log.read_text().splitlines() if re.search(pattern, line)]
        if found:
            return found
        time.sleep(0.1)
    return []


def test_startup_lines_name_the_api_and_the_console(server: Process) -> None:
    assert log_lines(server, rf"INFO nobusy serving .* at http://127.0.0.1:{server.port}/v1")
    assert log_lines(server, rf"console: http://127.0.0.1:{server.port}/")
    assert log_lines(server, r"data dir: .*data")


def test_one_access_line_per_request(server: Process) -> None:
    response = ask(server, "ok")
    request_id = response.headers["x-request-id"]
    (line,) = log_lines(server, f"request {request_id}")
    assert "INFO nobusy.access" in line
    for part in ("POST /v1/chat/completions", "status=200", "alias=ok", "upstream=fake/ok",
                 "outcome=ok"):  # fmt: skip
        assert part in line, line
    assert re.search(r"ttft=\d+ms tokens=\d+\+12 ", line), line
    missing = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "nope"})
    (line,) = log_lines(server, f"request {missing.headers['x-request-id']}")
    assert "status=400" in line or "status=404" in line


def test_failover_is_a_warning_in_plain_words(server: Process) -> None:
    response = ask(server, "failover")
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    (warning,) = log_lines(server, f"WARNING .*request {request_id}: refusing failed")
    assert "cannot connect: connection refused" in warning
    assert "failing over to backup" in warning
    (access,) = log_lines(server, f"request {request_id} POST")
    assert "tried=refusing,backup" in access and "upstream=backup" in access
    text = server.log.read_text()
    assert "Cannot connect to host" not in text and "ssl:default" not in text


def test_continuation_and_circuits_are_warnings(server: Process) -> None:
    response = ask(server, "drop", stream=True)
    request_id = response.headers["x-request-id"]
    assert log_lines(server, f"WARNING .*request {request_id}: fake/drop.* failed mid-answer")
    assert log_lines(server, f"WARNING .*request {request_id}: continuing the answer on backup")
    ask(server, "gone")
    assert log_lines(server, r"WARNING nobusy.circuit circuit of dead open for 30s .*refused")
    httpx.post(f"{server.url}/v1/nobusy/upstreams/dead/reset")
    assert log_lines(server, r"WARNING nobusy.circuit circuit of dead closed")


def test_a_limit_change_is_a_warning(server: Process) -> None:
    ask(server, "busy")
    assert log_lines(server, r"WARNING nobusy.limits concurrency limit of busy 32 -> 1: busy")


def test_readyz_is_unavailable_when_no_route_can_answer(
    fake_upstream: Process, tmp_path: Path
) -> None:
    # Only routes that refuse: after one real attempt, no alias can answer.
    config = f"""
upstreams:
  refusing: {{kind: openai, base_url: "http://127.0.0.1:{free_port()}/v1", default_model: ok}}
models:
  refused: [refusing]
"""
    process = serve(tmp_path, config)
    try:
        assert httpx.get(f"{process.url}/readyz").status_code == 200  # nothing tried yet
        assert ask(process, "refused").status_code >= 500
        ready = httpx.get(f"{process.url}/readyz")
    finally:
        process.stop()
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["status"] == "unavailable" and "no route" in body["reason"]
    why = body["aliases"]["refused"]["why"]["refusing"]
    assert "last attempt failed: cannot connect: connection refused" in why


def test_readiness_process_means_up(fake_upstream: Process, tmp_path: Path) -> None:
    config = f"""
readiness: process
upstreams:
  refusing: {{kind: openai, base_url: "http://127.0.0.1:{free_port()}/v1", default_model: ok}}
models:
  refused: [refusing]
"""
    process = serve(tmp_path, config)
    try:
        ask(process, "refused")
        ready = httpx.get(f"{process.url}/readyz")
    finally:
        process.stop()
    assert ready.status_code == 200 and ready.json()["readiness"] == "process"


def test_check_reports_an_open_circuit_as_down(fake_upstream: Process, tmp_path: Path) -> None:
    config = f"""
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
  broken: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: "http:status=500",
            circuit: {{consecutive_failures: 1}}}}
models:
  ok: [fake]
  broken: [broken]
"""
    process = serve(tmp_path, config)
    try:
        ask(process, "broken")  # its circuit opens on the server; /models still answers
        result = nobusy("check", "--config", str(tmp_path / "nobusy.yaml"), "--url", process.url)
    finally:
        process.stop()
    assert result.returncode == 1, result.stdout
    row = next(line for line in result.stdout.splitlines() if " broken " in line)
    assert "down" in row and "open" in row and "failed" in row, row
    ok_row = next(line for line in result.stdout.splitlines() if " fake " in line)
    assert " ok " in ok_row, ok_row


def test_check_asks_for_a_real_answer(fake_upstream: Process, tmp_path: Path) -> None:
    # /models answers, but every completion fails: `check` must not say ok.
    path = tmp_path / "nobusy.yaml"
    path.write_text(f"""
upstreams:
  broken: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: "http:status=500"}}
""")
    result = nobusy("check", "--config", str(path), "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1, result.stdout
    row = next(line for line in result.stdout.splitlines() if " broken " in line)
    assert "down" in row and "answer: HTTP 500" in row, row
