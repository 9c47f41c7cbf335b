"""The `nobusy` commands as a person runs them: real processes, readable tables, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from nobusy.testing.fake_upstream import answer_text
from tests.conftest import Process, free_port, serve


def nobusy(
    *args: str, stdin: str | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "nobusy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def config(tmp_path: Path, fake: Process, extra: str = "") -> Path:
    path = tmp_path / "nobusy.yaml"
    path.write_text(f"""
upstreams:
  fake: {{kind: openai, base_url: "http://127.0.0.1:{fake.port}/v1"}}
  local: {{kind: embedded}}
{extra}
models:
  chat: [fake/ok, local]
  small: [local]
""")
    return path


def test_models_prints_aliases_and_routes(tmp_path: Path, fake_upstream: Process) -> None:
    result = nobusy("models", "--config", str(config(tmp_path, fake_upstream)))
    assert result.returncode == 0, result.stderr
    assert "Model aliases" in result.stdout
    assert "chat" in result.stdout and "fake/ok" in result.stdout and "local" in result.stdout


def test_check_probes_fake_and_embedded(tmp_path: Path, fake_upstream: Process) -> None:
    result = nobusy("check", "--config", str(config(tmp_path, fake_upstream)))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    fake_row = next(line for line in lines if " fake " in line)
    assert "openai" in fake_row and " ok " in fake_row and "ms" in fake_row
    assert "fake-model" in fake_row
    local_row = next(line for line in lines if " local " in line)
    assert "embedded" in local_row and "smollm2-135m-instruct" in local_row


def test_check_exits_1_when_an_upstream_is_down(tmp_path: Path, fake_upstream: Process) -> None:
    extra = f'  dead: {{kind: openai, base_url: "http://127.0.0.1:{free_port()}/v1"}}'
    result = nobusy("check", "--config", str(config(tmp_path, fake_upstream, extra)))
    assert result.returncode == 1
    dead_row = next(line for line in result.stdout.splitlines() if " dead " in line)
    assert "down" in dead_row and "cannot connect" in dead_row


def test_config_error_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstreams:\n  a: {kind: openai, base_url: 12}\n")
    result = nobusy("models", "--config", str(path))
    assert result.returncode == 1
    assert "upstreams.a.base_url" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_public_address_without_keys(tmp_path: Path) -> None:
    result = nobusy("serve", "--host", "0.0.0.0", "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "--insecure" in result.stderr


def test_chat_streams_and_keeps_the_conversation(gateway: Process) -> None:
    stdin = "first question\nsecond question\n/exit\n"
    result = nobusy("chat", "--url", gateway.url + "/v1", "--model", "ok", stdin=stdin)
    assert result.returncode == 0, result.stderr
    first = [{"role": "user", "content": "first question"}]
    second = [
        *first,
        {"role": "assistant", "content": answer_text(first)},
        {"role": "user", "content": "second question"},
    ]
    assert answer_text(first) in result.stdout
    assert answer_text(second) in result.stdout
    assert "(fake/ok)" in result.stdout


def test_chat_shows_reasoning(gateway: Process) -> None:
    result = nobusy("chat", "--url", gateway.url + "/v1", "-m", "reasoning", stdin="why?\n")
    assert result.returncode == 0, result.stderr
    assert "thinking:" in result.stdout


def test_chat_explains_when_server_is_not_running() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = nobusy("chat", "--url", url, stdin="hi\n")
    assert result.returncode == 1
    assert "is `nobusy serve` running?" in result.stderr


def test_check_shows_live_circuits_of_a_running_server(
    tmp_path: Path, fake_upstream: Process
) -> None:
    path = config(
        tmp_path,
        fake_upstream,
        f'  dead: {{kind: openai, base_url: "http://127.0.0.1:{free_port()}/v1",'
        " default_model: x, circuit: {consecutive_failures: 1}}",
    )
    text = path.read_text().replace("small: [local]", "small: [local]\n  gone: [dead]")
    server = serve(tmp_path, text)
    # `check` finds the running server at the port its config names.
    (tmp_path / "nobusy.yaml").write_text(f"port: {server.port}\n" + text)
    try:
        httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "gone", "messages": [{"role": "user", "content": "x"}]},
        )
        result = nobusy("check", "--config", str(tmp_path / "nobusy.yaml"))
    finally:
        server.stop()
    assert "circuit, last outcome: the running server" in " ".join(result.stdout.split())
    dead_row = next(line for line in result.stdout.splitlines() if " dead " in line)
    assert "open" in dead_row


def test_check_shows_which_continuation_each_upstream_honours(
    tmp_path: Path, fake_upstream: Process
) -> None:
    # The fake behind `vllmonly` ignores `prefix: true` as an upstream without prefix
    # completion would: the configured prefix is reported as not continuing.
    url = f"http://127.0.0.1:{fake_upstream.port}/v1"
    extra = (
        f'  vllmonly: {{kind: openai, base_url: "{url}", '
        'default_model: "ok:continuation=vllm", continuation: prefix}'
    )
    path = config(tmp_path, fake_upstream, extra)
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "nobusy", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if line.count("│") > 3}
    assert "prefix continues, vllm continues; auto uses prefix" in rows["fake"]
    assert "prefix restarts, vllm continues; configured prefix did not" in rows["vllmonly"]
    assert "raw completion (always)" in rows["local"]
