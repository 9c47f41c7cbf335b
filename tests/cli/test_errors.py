"""Every command, given bad input, says what is wrong in one line and a hint: never a traceback.
And every command finds the server's data as `serve` does, or says where it looked."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_commands import nobusy
from tests.conftest import Process, free_port, serve


def assert_one_line_error(result: object, says: str) -> None:
    out = result.stdout + result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in out, out
    assert result.returncode != 0, out  # type: ignore[attr-defined]
    assert says in result.stderr, out  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def keyed(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, str]]:
    """A server that needs API keys, and one of them."""
    tmp = tmp_path_factory.mktemp("keyed")
    created = nobusy("keys", "create", "--name", "me", "--data-dir", str(tmp / "data"))
    assert created.returncode == 0, created.stderr
    config = f"""
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1"}}
models:
  ok: [fake/ok]
"""
    process = serve(tmp, config)
    yield process, created.stdout.strip()
    process.stop()


def test_chat_without_v1_and_without_a_key_says_so(keyed: tuple[Process, str]) -> None:
    server, secret = keyed
    result = nobusy("chat", "--url", server.url, stdin="hi\n")  # no /v1, no key
    assert_one_line_error(result, "needs an API key")
    assert "Malformed" not in result.stderr
    assert "hint: pass --api-key" in result.stderr
    result = nobusy("chat", "--url", server.url, "--api-key", "nb-wrong", stdin="hi\n")
    assert_one_line_error(result, "refused the API key")
    # With the key, the same URL without /v1 works.
    result = nobusy("chat", "--url", server.url + "/", "--api-key", secret, stdin="hi\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert "(fake/ok)" in result.stdout


def _corrupt_data(tmp_path: Path) -> Path:
    data = tmp_path / "corrupt"
    data.mkdir()
    (data / "nobusy.db").write_bytes(b"this is not a database" * 100)
    (data / "audit.db").write_bytes(b"this is not a database" * 100)
    return data


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["models", "--config", "missing.yaml"], "cannot read config file"),
        (["check", "--config", "bad.yaml"], "not valid YAML"),
        (["serve", "--config", "typo.yaml", "--port", "1"], "did you mean 'upstreams'?"),
        (["keys", "list"], "no nobusy.db in"),
        (["keys", "show", "x", "--data-dir", "corrupt"], "database"),
        (["keys", "revoke", "x", "--config", "missing.yaml"], "cannot read config file"),
        (["usage"], "no nobusy.db in"),
        (["usage", "--data-dir", "corrupt"], "database"),
        (["audit", "verify"], "no audit.db in"),
        (["audit", "verify", "--data-dir", "corrupt"], "Error:"),
        (["audit", "export", "--since", "1d", "--data-dir", "corrupt"], "Error:"),
        (["secret", "encrypt", "--data-dir", "afile"], "Error:"),
        (["chat", "--url", "http://127.0.0.1:{dead}"], "cannot reach nobusy"),
        (["chat", "--url", "http://127.0.0.1:{fake}/nothing"], "no OpenAI-compatible API"),
    ],
)
def test_no_command_prints_a_traceback(
    tmp_path: Path, fake_upstream: Process, args: list[str], says: str
) -> None:
    (tmp_path / "bad.yaml").write_text("upstreams: [\n")
    (tmp_path / "typo.yaml").write_text("upstream:\n  a: {kind: embedded}\nmodels:\n  x: [a]\n")
    (tmp_path / "afile").write_text("not a directory")
    _corrupt_data(tmp_path)
    args = [a.format(dead=free_port(), fake=fake_upstream.port) for a in args]
    result = nobusy(*args, stdin="secret\n", cwd=tmp_path)
    assert_one_line_error(result, says)
    assert not (tmp_path / "data").exists()  # nothing created on the way


def test_commands_find_the_servers_data_from_its_config(tmp_path: Path) -> None:
    server_dir = tmp_path / "srv"
    config = tmp_path / "nobusy.yaml"
    config.write_text(f"data_dir: {server_dir / 'data'}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    created = nobusy("keys", "create", "--name", "team-a", "--config", str(config), cwd=elsewhere)
    assert created.returncode == 0, created.stderr
    assert "Created a new key database" in created.stderr
    assert (server_dir / "data" / "nobusy.db").exists()
    assert not (elsewhere / "data").exists()
    listed = nobusy("keys", "list", "--config", str(config), cwd=elsewhere)
    assert listed.returncode == 0 and "team-a" in listed.stdout, listed.stderr
    # The same through NOBUSY_CONFIG, for usage too.
    import os

    os.environ["NOBUSY_CONFIG"] = str(config)
    try:
        listed = nobusy("keys", "list", cwd=elsewhere)
        usage = nobusy("usage", cwd=elsewhere)
    finally:
        del os.environ["NOBUSY_CONFIG"]
    assert listed.returncode == 0 and "team-a" in listed.stdout, listed.stderr
    assert usage.returncode == 0 and "No requests logged" in usage.stdout, usage.stderr
    # Without a config, in a folder with no data: an error naming where it looked.
    lost = nobusy("keys", "list", cwd=elsewhere)
    assert_one_line_error(lost, str(elsewhere / "data"))
    assert "--config" in lost.stderr and not (elsewhere / "data").exists()


def test_revoked_keys_names_topups_and_the_last_key(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    assert (
        nobusy("keys", "create", "--name", "team-a", "--quota-tokens", "10", *data).returncode == 0
    )
    revoked = nobusy("keys", "revoke", "team-a", *data)
    assert revoked.returncode == 0, revoked.stderr
    # The last active key is gone: say so, and how to get back in.
    assert "last active key" in revoked.stderr and "nobusy keys create" in revoked.stderr
    topup = nobusy("keys", "topup", "team-a", "5", *data)
    assert_one_line_error(topup, "is revoked")
    again = nobusy("keys", "create", "--name", "team-a", *data)
    assert again.returncode == 0, again.stderr  # a revoked key's name can be used again
    shown = nobusy("keys", "show", "team-a", *data)
    assert "active" in shown.stdout, shown.stdout  # by name, the live key
    taken = nobusy("keys", "create", "--name", "team-a", *data)
    assert_one_line_error(taken, "already exists")
    with sqlite3.connect(tmp_path / "data" / "nobusy.db") as conn:
        names = conn.execute("SELECT name, revoked_at IS NULL FROM keys ORDER BY rowid").fetchall()
    assert names == [("team-a", 0), ("team-a", 1)]


def test_serve_says_serving_only_once_it_serves(tmp_path: Path) -> None:
    refused = nobusy("serve", "--host", "0.0.0.0", "--port", str(free_port()), cwd=tmp_path)
    assert refused.returncode == 1
    assert "refusing to listen" in refused.stderr
    assert "serving" not in refused.stdout + refused.stderr


def test_a_failed_start_is_one_line(tmp_path: Path) -> None:
    # An embedded model that cannot load fails the app's start-up inside uvicorn.
    (tmp_path / "nobusy.yaml").write_text(
        f"upstreams:\n  local: {{kind: embedded, model_path: {tmp_path / 'missing.gguf'}}}\n"
    )
    result = nobusy(
        "serve", "--config", "nobusy.yaml", "--port", str(free_port()), cwd=tmp_path, timeout=120
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert "nobusy cannot start:" in out and ("missing.gguf" in out or "llama_cpp" in out), out
