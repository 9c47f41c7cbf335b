"""Reload end to end: `nobusy serve` over loopback, the config rewritten, SIGHUP or the admin API;
driven with the openai SDK against the shipped fake upstream. Which upstream answered is read
from ``x-nobusy-upstream``."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
import yaml
from click.testing import CliRunner

from nobusy.cli import cli
from tests.conftest import Process, serve

SLOW = "slow:chunk_delay=0.2,tokens=12"


def _config(fake: str, upstreams: dict[str, str], models: dict[str, list[str]]) -> str:
    lines = ["upstreams:"]
    for name, model in upstreams.items():
        lines.append(f'  {name}: {{kind: openai, base_url: "{fake}/v1", default_model: "{model}"}}')
    lines.append("models:")
    lines += [f"  {alias}: {routes}" for alias, routes in models.items()]
    return "\n".join(lines) + "\n"


def _wait_log(server: Process, pattern: str, count: int = 1, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(re.findall(pattern, server.log.read_text())) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not logged {count}x:\n{server.log.read_text()[-3000:]}")


def _upstream(client: openai.OpenAI, model: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return raw.headers["x-nobusy-upstream"]


_clients: list[openai.OpenAI | httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


@pytest.fixture()
def server(tmp_path: Path, fake_upstream: Process) -> Iterator[Process]:
    config = _config(
        fake_upstream.url, {"one": SLOW, "two": "ok"}, {"slow": ["one"], "ok": ["two"]}
    )
    process = serve(tmp_path, config)
    yield process
    process.stop()


def _client(server: Process) -> openai.OpenAI:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    _clients.append(client)
    return client


def test_sighup_removes_an_upstream_under_a_running_stream(
    server: Process, fake_upstream: Process, tmp_path: Path
) -> None:
    client = _client(server)
    stream = client.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices
    # `one` (the stream's upstream) and its alias go; `three` comes with a new alias.
    config = _config(
        fake_upstream.url, {"two": "ok", "three": "ok"}, {"ok": ["two"], "new": ["three"]}
    )
    (tmp_path / "nobusy.yaml").write_text(config)
    server.proc.send_signal(signal.SIGHUP)
    _wait_log(server, r"reloaded in [\d.]+s: upstreams added \['three'\], removed \['one'\]")
    rest = list(chunks)
    stream.close()
    text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert len(text.split()) == 12, text  # the whole answer, none of it cut
    assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "stop"
    _wait_log(server, r"upstream one retired")
    assert _upstream(client, "new") == "three"
    assert _upstream(client, "ok") == "two"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}])
    models = [m.id for m in client.models.list()]
    assert "new" in models and "slow" not in models


def test_an_invalid_config_is_refused_and_the_old_one_stays(
    server: Process, tmp_path: Path
) -> None:
    good = (tmp_path / "nobusy.yaml").read_text()
    (tmp_path / "nobusy.yaml").write_text(good.replace("ok: ['two']", "ok: ['nowhere']"))
    server.proc.send_signal(signal.SIGHUP)
    _wait_log(server, r"reload refused, the running configuration stays: models\.ok")
    answer = httpx.post(server.url + "/v1/nobusy/reload")
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    # The very words `nobusy check` says of the same file.
    check = CliRunner().invoke(cli, ["check", "--config", str(tmp_path / "nobusy.yaml")])
    assert check.exit_code == 1
    assert message in " ".join(check.output.split())
    assert message.startswith("config error: models.ok.routes[0]: upstream 'nowhere'")
    assert _upstream(_client(server), "ok") == "two"
    # `nobusy reload` checks first and signals nothing.
    data = ["--data-dir", str(server.data_dir)]
    refused = CliRunner().invoke(cli, ["reload", "--config", str(tmp_path / "nobusy.yaml"), *data])
    assert refused.exit_code == 1 and "nowhere" in refused.output
    (tmp_path / "nobusy.yaml").write_text(good)
    done = CliRunner().invoke(cli, ["reload", "--config", str(tmp_path / "nobusy.yaml"), *data])
    assert done.exit_code == 0, done.output
    _wait_log(server, r"reloaded in")


def test_the_admin_api_writes_the_overlay_and_it_survives_a_restart(
    server: Process, fake_upstream: Process, tmp_path: Path
) -> None:
    api = httpx.Client(base_url=server.url + "/v1/nobusy", timeout=30)
    _clients.append(api)
    managed = tmp_path / "nobusy.managed.yaml"
    added = api.post(
        "/upstreams",
        json={
            "name": "four",
            "kind": "openai",
            "base_url": fake_upstream.url + "/v1",
            "default_model": "ok",
            "api_key": "sk-secret-four-0000",
        },
    )
    assert added.status_code == 201, added.text
    assert added.json()["after"]["api_key"] == "********"
    assert "sk-secret" not in managed.read_text()  # written encrypted
    assert api.post("/aliases", json={"name": "four", "routes": ["four"]}).status_code == 201
    assert _upstream(_client(server), "four") == "four"
    probe = api.post("/upstreams/four/probe").json()
    assert probe["status"] == "ok" and probe["latency_ms"] > 0 and probe["error"] is None
    listed = {u["name"]: u for u in api.get("/upstreams").json()["data"]}
    assert listed["four"]["managed"] and listed["four"]["config"]["api_key"] == "********"

    # An edit that would break the config: refused with check's words, nothing written.
    before = managed.read_bytes()
    refused = api.delete("/upstreams/two")
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "config error: models.ok.routes[0]: upstream 'two' is not defined under upstreams "
        "(defined: four, one)"
    )
    assert managed.read_bytes() == before
    # Disabling the only upstream of an enabled alias is refused too; disabling `one` after
    # its alias is disabled is not, and the alias disappears.
    assert api.post("/upstreams/one/disable").status_code == 400
    assert api.post("/aliases/slow/disable").status_code == 200
    assert api.post("/upstreams/one/disable").status_code == 200
    assert "slow" not in [m.id for m in _client(server).models.list()]

    server.stop()
    again = serve(tmp_path, (tmp_path / "nobusy.yaml").read_text())
    try:
        client = _client(again)
        assert _upstream(client, "four") == "four"  # the key decrypts with the data key
        assert "slow" not in [m.id for m in client.models.list()]
        overlay = yaml.safe_load(managed.read_text())
        assert overlay["upstreams"]["one"] == {"enabled": False}
        assert overlay["upstreams"]["four"]["api_key"].startswith("enc:")
    finally:
        again.stop()


def test_with_workers_every_worker_reloads(fake_upstream: Process, tmp_path: Path) -> None:
    config = _config(fake_upstream.url, {"two": "ok"}, {"ok": ["two"]})
    server = serve(tmp_path, config, "--workers", "2")
    try:
        _wait_log(server, r"Application startup complete", count=2, timeout=60)
        config = _config(
            fake_upstream.url, {"two": "ok", "three": "ok"}, {"ok": ["two"], "new": ["three"]}
        )
        (tmp_path / "nobusy.yaml").write_text(config)
        server.proc.send_signal(signal.SIGHUP)
        _wait_log(server, r"upstreams added \['three'\]", count=2)
        client = _client(server)
        assert {_upstream(client, "new") for _ in range(6)} == {"three"}
        # An edit through the admin API, taken by one worker, reaches the other too.
        with httpx.Client(base_url=server.url + "/v1/nobusy", timeout=30) as api:
            assert api.post("/aliases/new/disable").status_code == 200
        _wait_log(server, r"reloaded in", count=5)  # 2 by SIGHUP, then 1 + 2 for the edit
        for _ in range(6):
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(
                    model="new", messages=[{"role": "user", "content": "x"}]
                )
    finally:
        server.stop()


def test_every_change_is_in_the_audit_log(fake_upstream: Process, tmp_path: Path) -> None:
    config = "audit: {enabled: true}\n" + _config(
        fake_upstream.url, {"one": "ok", "two": "ok"}, {"m": ["one", "two"]}
    )
    server = serve(tmp_path, config)
    try:
        with httpx.Client(base_url=server.url + "/v1/nobusy", timeout=30) as api:
            secret = "sk-audited-secret-0001"
            assert api.patch("/upstreams/two", json={"api_key": secret}).status_code == 200
            assert api.post("/upstreams/one/disable").status_code == 200
    finally:
        server.stop()
    exported = CliRunner().invoke(
        cli,
        ["audit", "export", "--since", "1d", "--decrypt", "--config", str(tmp_path / "nobusy.yaml"),
         "--data-dir", str(server.data_dir)],
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output
    rows = [orjson.loads(line) for line in exported.output.splitlines() if line.startswith("{")]
    changes = [r for r in rows if r["event"] == "config"]
    assert [c["upstream"] for c in changes] == ["two", "one"]
    update, disable = (c["content"] for c in changes)
    assert update["action"] == "upstream.update" and update["after"]["api_key"] == "********"
    assert disable["action"] == "upstream.disable"
    assert disable["before"]["enabled"] is True and disable["after"]["enabled"] is False
    assert disable["who"].startswith("loopback client 127.0.0.1")
    assert secret not in exported.output


def test_a_variable_reference_stays_a_reference_in_the_overlay(
    server: Process, tmp_path: Path
) -> None:
    managed = tmp_path / "nobusy.managed.yaml"
    with httpx.Client(base_url=server.url + "/v1/nobusy", timeout=30) as api:
        assert api.patch("/upstreams/two", json={"api_key": "${TWO_KEY:-none}"}).status_code == 200
        assert api.post("/aliases/slow/disable").status_code == 200  # a later, unrelated edit
    overlay = yaml.safe_load(managed.read_text())
    assert overlay["upstreams"]["two"]["api_key"] == "${TWO_KEY:-none}"
    assert overlay["models"]["slow"] == {"enabled": False}


def test_settings_that_cannot_change_live_are_named(server: Process, tmp_path: Path) -> None:
    config = tmp_path / "nobusy.yaml"
    # `port` here changes nothing: the --port flag serve was given still wins, as at start.
    config.write_text("max_attempts: 5\nworkers: 3\nport: 1\n" + config.read_text())
    answer = httpx.post(server.url + "/v1/nobusy/reload", timeout=30)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["needs_restart"] == ["workers", "max_attempts"]
    assert result["upstreams"] == {
        "added": [],
        "removed": [],
        "changed": [],
        "kept": ["one", "two"],
    }
    assert _upstream(_client(server), "ok") == "two"  # still served, on its port


def test_enable_also_enables_what_the_yaml_disables(fake_upstream: Process, tmp_path: Path) -> None:
    config = _config(fake_upstream.url, {"one": "ok", "two": "ok"}, {"m": ["one", "two"]})
    config = config.replace(
        'default_model: "ok"}\nmodels', 'default_model: "ok", enabled: false}\nmodels'
    )
    server = serve(tmp_path, config)
    try:
        with httpx.Client(base_url=server.url + "/v1/nobusy", timeout=30) as api:
            assert api.get("/upstreams/two").json()["enabled"] is False
            assert api.post("/upstreams/two/enable").status_code == 200
            assert api.get("/upstreams/two").json()["enabled"] is True
        overlay = yaml.safe_load((tmp_path / "nobusy.managed.yaml").read_text())
        assert overlay == {"upstreams": {"two": {"enabled": True}}}
    finally:
        server.stop()
