"""Shared fixtures: real processes on loopback — the shipped fake upstream and nobusy itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up:\n{log.read_text()}")


@dataclass
class Process:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def data_dir(self) -> Path:
        return self.log.parent / "data"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_process(
    args: list[str], health: str, log: Path, port: int, env: dict[str, str] | None = None
) -> Process:
    cmd = [sys.executable, "-m", "nobusy", *args]
    with log.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            env={**os.environ, **(env or {})},
        )
    process = Process(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        wait_until_up(process.url + health, proc, log)
    except BaseException:
        process.stop()
        raise
    return process


def start_fake(folder: Path) -> Process:
    """`nobusy fake-upstream` on a free port, logging to ``folder``; the caller stops it."""
    port = free_port()
    return start_process(
        ["fake-upstream", "--port", str(port)], "/healthz", folder / "fake.log", port
    )


@pytest.fixture(scope="session")
def fake_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """`nobusy fake-upstream` as a user would run it; the route's model name picks the fault."""
    process = start_fake(tmp_path_factory.mktemp("fake"))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the session (skips, saying why, where none is installed)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture()
def fake_stats(fake_upstream: Process) -> Iterator[httpx.Client]:
    """A client for the fake upstream's counters, reset for the test that uses it."""
    with httpx.Client(base_url=fake_upstream.url) as client:
        client.post("/_fake/reset")
        yield client


def serve(tmp: Path, config: str, *extra: str, env: dict[str, str] | None = None) -> Process:
    """Start `nobusy serve` with a YAML config in its own data dir."""
    port = free_port()
    (tmp / "nobusy.yaml").write_text(config)
    args = [
        "serve",
        "--config",
        str(tmp / "nobusy.yaml"),
        "--port",
        str(port),
        "--data-dir",
        str(tmp / "data"),
        *extra,
    ]
    return start_process(args, "/healthz", tmp / "nobusy.log", port, env)


# One alias per fault drill: the faulty route first, a healthy one after it.
FAULTS: dict[str, list[str]] = {
    "refused": ["refused", "backup"],
    "http503": ["busy", "backup"],
    "http429": ["limited", "backup"],
    "hang": ["hang", "backup"],
    "keepalive": ["keepalive", "backup"],
    "drop0": ["fake/drop:drop_after=0", "backup"],
    "drop1": ["fake/drop:drop_after=1", "backup"],
    "drop5": ["fake/drop:drop_after=5", "backup"],
    "drop5-vllm": ["fake/drop:drop_after=5", "vllm/ok"],
    "drop5-auto": ["fake/drop:drop_after=5", "auto"],
    "drop5-wordy": ["fake/drop:drop_after=5", "wordy"],
    "garbage": ["fake/garbage", "backup"],
    "error-in-stream": ["fake/error-in-stream", "backup"],
    "slow-drip": ["fake/slow:chunk_delay=1.5", "backup"],
    "http401": ["badkey", "backup"],
    "reasoning-cut": ["fake/reasoning:cut_after=3", "backup/reasoning"],
    "reasoning-then-content-cut": ["fake/reasoning:cut_after=15", "backup/reasoning"],
    "tool-call-cut": ["fake/tool-call:cut_after=2", "backup/tool-call"],
}

GATEWAY_CONFIG = """
max_attempts: 6
retry_budget_min: 100000
upstreams:
  fake: {{kind: openai, base_url: "{fake}", api_key: "${{FAKE_KEY}}", first_token_timeout: 2,
          idle_timeout: 1, continuation: prefix}}
  vllm: {{kind: openai, base_url: "{fake}", continuation: vllm}}
  plain: {{kind: openai, base_url: "{fake}", continuation: none}}
  backup: {{kind: openai, base_url: "{fake}", default_model: ok, continuation: prefix}}
  auto: {{kind: openai, base_url: "{fake}", default_model: ok}}
  wordy: {{kind: openai, base_url: "{fake}", default_model: "ok:continuation=none"}}
  refused: {{kind: openai, base_url: "http://127.0.0.1:{dead}/v1", default_model: ok}}
  busy: {{kind: openai, base_url: "{fake}", default_model: http503}}
  limited: {{kind: openai, base_url: "{fake}", default_model: "http429:retry_after=7"}}
  hang: {{kind: openai, base_url: "{fake}", default_model: hang, first_token_timeout: 1}}
  keepalive: {{kind: openai, base_url: "{fake}", default_model: keepalive,
               first_token_timeout: 1}}
  badkey: {{kind: openai, base_url: "{fake}", default_model: "http:status=401"}}
  probed: {{kind: openai, base_url: "http://127.0.0.1:{dead}/v1", default_model: ok,
            health_check_interval: 0.2, circuit: {{consecutive_failures: 1}}}}
  local: {{kind: embedded}}
models:
  ok: [fake/ok]
  reasoning: [fake/reasoning]
  tools: [fake/tool-call]
  drop: [fake/drop]
  slow: [fake/slow]
  failover: [refused, busy, hang, keepalive, backup]
  rejected: [fake/http:status=400, backup]
  alldown: [refused, busy]
  allpaused: [busy, limited]
  local: [local]
  continue-local: ["fake/drop:drop_after=3", local]
  hedged: {{routes: ["fake/ok:delay=1", backup], hedge: {{after: 0.2, budget: 0.5}}}}
  unhedged: ["fake/ok:delay=1", backup]
""" + "".join(
    f"  fault-{name}: [{', '.join(repr(r) for r in routes)}]\n" for name, routes in FAULTS.items()
)


@pytest.fixture(scope="session")
def gateway(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """nobusy in front of the fake upstream (several faults as aliases) and the embedded model."""
    tmp = tmp_path_factory.mktemp("gateway")
    config = GATEWAY_CONFIG.format(fake=f"{fake_upstream.url}/v1", dead=free_port())
    process = serve(tmp, config, env={"FAKE_KEY": "sk-test-secret-123"})
    yield process
    process.stop()


@pytest.fixture()
def base_url(gateway: Process) -> str:
    """The gateway's API, with every circuit closed again so that tests stay independent."""
    httpx.post(gateway.url + "/v1/nobusy/upstreams/all/reset").raise_for_status()
    return gateway.url + "/v1"


# The same drills with `kind: anthropic` upstreams: the fake answers /v1/messages with the same
# faults and text, so these upstreams and aliases are GATEWAY_CONFIG's in Anthropic's format.
ANTHROPIC_GATEWAY_CONFIG = """
max_attempts: 6
retry_budget_min: 100000
upstreams:
  fake: {{kind: anthropic, base_url: "{fake}", api_key: "${{FAKE_KEY}}", first_token_timeout: 2,
          idle_timeout: 1, continuation: prefix}}
  vllm: {{kind: anthropic, base_url: "{fake}", continuation: vllm}}
  backup: {{kind: anthropic, base_url: "{fake}", default_model: ok, continuation: prefix}}
  auto: {{kind: anthropic, base_url: "{fake}", default_model: ok}}
  wordy: {{kind: anthropic, base_url: "{fake}", default_model: "ok:continuation=none"}}
  refused: {{kind: anthropic, base_url: "http://127.0.0.1:{dead}", default_model: ok}}
  busy: {{kind: anthropic, base_url: "{fake}", default_model: http503}}
  limited: {{kind: anthropic, base_url: "{fake}", default_model: "http429:retry_after=7"}}
  hang: {{kind: anthropic, base_url: "{fake}", default_model: hang, first_token_timeout: 1}}
  keepalive: {{kind: anthropic, base_url: "{fake}", default_model: keepalive,
               first_token_timeout: 1}}
  badkey: {{kind: anthropic, base_url: "{fake}", default_model: "http:status=401"}}
models:
  ok: [fake/ok]
  reasoning: [fake/reasoning]
  tools: [fake/tool-call]
  drop: [fake/drop]
  rejected: [fake/http:status=400, backup]
  alldown: [refused, busy]
  allpaused: [busy, limited]
""" + "".join(
    f"  fault-{name}: [{', '.join(repr(r) for r in routes)}]\n" for name, routes in FAULTS.items()
)


@pytest.fixture(scope="session")
def anthropic_gateway(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """nobusy in front of the fake upstream's Messages API: `kind: anthropic` upstreams."""
    tmp = tmp_path_factory.mktemp("anthropic-gateway")
    config = ANTHROPIC_GATEWAY_CONFIG.format(fake=fake_upstream.url, dead=free_port())
    process = serve(tmp, config, env={"FAKE_KEY": "sk-test-secret-123"})
    yield process
    process.stop()


@pytest.fixture(params=["openai", "anthropic"])
def any_kind_url(request: pytest.FixtureRequest) -> str:
    """Like ``base_url``, once with ``kind: openai`` upstreams and once with ``kind: anthropic``
    ones (the same upstream and alias names), for the drills both kinds must pass."""
    gateway: Process = request.getfixturevalue(
        "gateway" if request.param == "openai" else "anthropic_gateway"
    )
    httpx.post(gateway.url + "/v1/nobusy/upstreams/all/reset").raise_for_status()
    return gateway.url + "/v1"


_CLIENTS: dict[str, openai.OpenAI] = {}


def openai_client(base_url: str) -> openai.OpenAI:
    """One official SDK client per base URL, closed at the end of the session."""
    if base_url not in _CLIENTS:
        _CLIENTS[base_url] = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    return _CLIENTS[base_url]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for client in _CLIENTS.values():
        client.close()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A private PostgreSQL 18 for the session (skips, saying why, where it cannot start)."""
    with PostgresServer.private(free_port()) as server:
        yield server.start_or_skip()


@pytest.fixture()
def pg_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, empty database of its own for one test."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    return postgres_server.new_database(name)
