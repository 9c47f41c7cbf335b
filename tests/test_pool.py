"""The pool of local servers end to end: nobusy in front of two fake vLLM servers, driven with the
openai SDK; which server answered is read from ``x-nobusy-upstream``, never from timings."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from click.testing import CliRunner

from nobusy.cli import cli
from nobusy.upstreams import build_upstream, settings_class
from tests.conftest import Process, free_port, serve, start_process

SYSTEM = "You answer from this handbook only. " + "Section text of the handbook. " * 100


def _fake_server(folder: Path, name: str) -> Process:
    port = free_port()
    args = ["fake-upstream", "--port", str(port), "--server", "vllm", "--capacity", "1"]
    return start_process(args, "/healthz", folder / f"{name}.log", port)


@pytest.fixture(scope="module")
def pool(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: Process
) -> Iterator[tuple[Process, dict[str, Process]]]:
    folder = tmp_path_factory.mktemp("pool")
    fakes = {name: _fake_server(folder, name) for name in ("x", "y")}
    lines = [
        f'  {n}: {{kind: vllm, base_url: "{p.url}/v1", default_model: fake-model, '
        "metrics_interval: 0.1}"
        for n, p in fakes.items()
    ]
    config = "\n".join(
        [
            "upstreams:",
            *lines,
            f'  blind: {{kind: vllm, base_url: "{fake_upstream.url}/v1", '
            "default_model: fake-model, metrics_interval: 0.2}",
            "models:",
            "  pool: [[x, y]]",
            "  blind: [blind]",
            "",
        ]
    )
    server = serve(folder, config)
    try:
        _wait_for(server, lambda rows: all(r["signals"] == "metrics" for r in rows[:2]))
        yield server, fakes
    finally:
        server.stop()
        for fake in fakes.values():
            fake.stop()


def _rows(server: Process) -> dict[str, dict[str, Any]]:
    data = httpx.get(server.url + "/v1/nobusy/pool").json()["data"]
    return {row["name"]: row for row in data}


def _wait_for(server: Process, ready: Callable[[list[dict[str, Any]]], bool]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ready(list(_rows(server).values())):
            return
        time.sleep(0.05)
    raise AssertionError(f"pool never got there: {_rows(server)}")


def _ask(server: Process, question: str, alias: str = "pool") -> str:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    with openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model=alias, messages=messages)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content
    return raw.headers["x-nobusy-upstream"]


def _occupy(fake: Process, count: int) -> list[socket.socket]:
    """Requests straight to the fake that hold its one slot and queue behind it until closed."""
    body = orjson.dumps(
        {"model": "ok:delay=30", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: fake\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", fake.port))
        sock.sendall(head + body)
        socks.append(sock)
    return socks


def test_a_conversation_stays_on_the_server_holding_its_prefix(pool: Any) -> None:
    server, _ = pool
    first = _ask(server, "What does section one say?")
    for turn in range(3):
        assert _ask(server, f"What does section one say? And then {turn}?") == first
    rows = _rows(server)
    assert rows[first]["placed"] >= 4
    assert rows[first]["cache_hit_estimate"] > 0.5


def test_an_overloaded_server_is_left_for_the_other(pool: Any) -> None:
    server, fakes = pool
    home = _ask(server, "Which server holds me?")
    other = "y" if home == "x" else "x"
    socks = _occupy(fakes[home], 4)
    try:
        _wait_for(
            server, lambda rows: any(r["name"] == home and (r["waiting"] or 0) >= 2 for r in rows)
        )
        assert _ask(server, "Which server holds me? Once more.") == other
    finally:
        for sock in socks:
            sock.close()


def test_drain_and_undrain(pool: Any) -> None:
    server, _ = pool
    runner = CliRunner()
    home = _ask(server, "Where am I placed?")
    other = "y" if home == "x" else "x"
    result = runner.invoke(cli, ["pool", "--url", server.url, "drain", home])
    assert result.exit_code == 0, result.output
    assert _ask(server, "Where am I placed? Again.") == other
    table = runner.invoke(cli, ["pool", "--url", server.url], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and re.search(rf"{home} \(drained\)", table.output)
    refused = runner.invoke(cli, ["pool", "--url", server.url, "drain", other])
    assert refused.exit_code == 1 and "would leave no upstream for pool" in refused.output
    assert runner.invoke(cli, ["pool", "--url", server.url, "undrain", home]).exit_code == 0
    assert not _rows(server)[home]["drained"]


def test_a_bad_metrics_endpoint_falls_back_to_the_learned_limit(pool: Any) -> None:
    server, _ = pool
    assert _ask(server, "Still answered?", alias="blind") == "blind"
    row = _rows(server)["blind"]
    assert row["signals"] == "learned limit" and row["problem"] == "HTTP 404"
    log = server.log.read_text()
    assert (
        "upstream blind: metrics at" in log and "ignored: HTTP 404; using the learned limit" in log
    )
    assert log.count("upstream blind: metrics at") == 1  # warned once, not every second


def test_pool_metrics_are_exported(pool: Any) -> None:
    server, _ = pool
    text = httpx.get(server.url + "/metrics").text
    assert 'nobusy_pool_utilisation{upstream="x"}' in text
    assert 'nobusy_pool_metrics_believed{upstream="blind"} 0.0' in text


async def test_a_wrong_kind_is_said_plainly(pool: Any) -> None:
    _, fakes = pool
    spec = {"kind": "sglang", "base_url": fakes["x"].url + "/v1", "default_model": "fake-model"}
    upstream = build_upstream("wrong", settings_class("sglang").model_validate(spec))
    try:
        probe = await upstream.probe()
    finally:
        await upstream.aclose()
    assert not probe.ok
    assert probe.detail == "its metrics are vllm's, not sglang's: set kind: vllm"
