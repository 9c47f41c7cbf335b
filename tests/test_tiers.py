"""Tiers and spill end to end: a fake vLLM server (one slot) as tier 0, the shipped fake upstream
with a price as the cloud tier 1, driven with the openai SDK; which tier answered is read from
``x-nobusy-upstream``, never from timings."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from click.testing import CliRunner

from nobusy.cli import cli
from tests.conftest import Process, free_port, serve, start_process


@pytest.fixture(scope="module")
def tiers(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: Process
) -> Iterator[tuple[Process, Process]]:
    folder = tmp_path_factory.mktemp("tiers")
    port = free_port()
    # Answers take about 0.6 s (12 tokens, 0.05 s apart): a slot frees about every 0.6 s.
    args = ["fake-upstream", "--port", str(port), "--server", "vllm", "--capacity", "1"]
    args += ["--chunk-delay", "0.05"]
    local = start_process(args, "/healthz", folder / "local.log", port)
    config = f"""
upstreams:
  local: {{kind: vllm, base_url: "{local.url}/v1", default_model: fake-model,
          metrics_interval: 0.1, slots: 1}}
  cloud:
    kind: openai
    base_url: "{fake_upstream.url}/v1"
    default_model: fake-model
    tier: 1
    price: {{currency: CNY, input: 2000, output: 8000}}
models:
  patient: {{routes: [local, cloud], spill_after: 60}}
  eager: {{routes: [local, cloud], spill_after: 0.01}}
"""
    server = serve(folder, config)
    try:
        _wait(server, lambda body: body["data"] and body["data"][0]["signals"] == "metrics")
        yield server, local
    finally:
        server.stop()
        local.stop()


def _pool(server: Process) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(server.url + "/v1/nobusy/pool").json()
    return body


def _wait(server: Process, ready: Any) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if ready(_pool(server)):
            return
        time.sleep(0.05)
    raise AssertionError(f"never got there: {_pool(server)}")


def _ask(server: Process, alias: str) -> str:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=alias, messages=[{"role": "user", "content": "Which tier answers?"}]
        )
    assert raw.parse().choices[0].message.content
    return raw.headers["x-nobusy-upstream"]


def _occupy(fake: Process, delay: float) -> socket.socket:
    """A request straight to the fake that holds its one slot for ``delay`` seconds."""
    body = orjson.dumps(
        {
            "model": f"ok:delay={delay}",
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        }
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: fake\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", fake.port))
    sock.sendall(head + body)
    return sock


def test_an_idle_local_tier_takes_everything(tiers: Any) -> None:
    server, _ = tiers
    assert {_ask(server, "eager") for _ in range(3)} == {"local"}


def test_a_full_local_tier_spills_only_past_spill_after(tiers: Any) -> None:
    server, local = tiers
    # Long enough for a loaded machine to see it and ask meanwhile (CI once took over 5 s);
    # the patient request below waits out the rest.
    # First a reading with nothing running (the last test's answers seen ended), so that the
    # reading seen running below is one taken after the slot was occupied, not an older one.
    _wait(server, lambda body: body["data"][0]["running"] == 0)
    sock = _occupy(local, 12)
    try:
        _wait(server, lambda body: (body["data"][0]["running"] or 0) >= 1)
        # One request ahead, a slot freeing about every 0.6 s: past 0.01 s, well within 60 s.
        assert _ask(server, "eager") == "cloud"
        assert _ask(server, "patient") == "local"  # waited for the local slot
    finally:
        sock.close()
    tiers_now = {row["tier"]: row for row in _pool(server)["tiers"]}
    assert tiers_now[1]["upstreams"] == ["cloud"] and tiers_now[1]["spilled"] >= 1
    assert tiers_now[1]["spill_cost"] > 0 and tiers_now[1]["currency"] == "CNY"
    assert tiers_now[0]["spilled"] == 0 and tiers_now[0]["answered"] >= 1
    metrics = httpx.get(server.url + "/metrics").text
    assert 'nobusy_tier_spilled_total{tier="1"}' in metrics
    assert 'nobusy_tier_spill_cost_total{currency="CNY",tier="1"}' in metrics
    table = CliRunner().invoke(cli, ["pool", "--url", server.url], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "spill cost" in table.output and "CNY" in table.output
