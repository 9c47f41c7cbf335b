"""The status board's pool: two fake vLLM servers (two slots each) as tier 0 and the priced fake
upstream as the cloud tier 1, kept busy by streams in the background; the board shows each
server's running/waiting and KV bars, and the tiers with the spilled share, its cost and the
split over time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

from tests.conftest import Process, free_port, serve, start_process
from tests.web.conftest import ADMIN_KEY, enter_keys


@pytest.fixture(scope="module")
def pool_console(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    folder = tmp_path_factory.mktemp("pool-board")
    fakes = []
    for name in ("gpu-a", "gpu-b"):
        port = free_port()
        args = ["fake-upstream", "--port", str(port), "--server", "vllm", "--capacity", "2"]
        args += ["--chunk-delay", "0.1"]
        fakes.append(start_process(args, "/healthz", folder / f"{name}.log", port))
    servers = "\n".join(
        f'  {name}: {{kind: vllm, base_url: "{fake.url}/v1", default_model: fake-model, '
        "slots: 2, max_concurrency: 2, metrics_interval: 0.2}"
        for name, fake in zip(("gpu-a", "gpu-b"), fakes, strict=True)
    )
    config = f"""
admin_key: "{ADMIN_KEY}"
upstreams:
{servers}
  cloud: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: "ok:chunk_delay=0.1",
          tier: 1, price: {{currency: CNY, input: 2000, output: 8000}}}}
models:
  pool: {{routes: [[gpu-a, gpu-b], cloud], spill_after: 1}}
"""
    server = serve(folder, config)
    yield server
    server.stop()
    for fake in fakes:
        fake.stop()


def _keep_busy(url: str, stop: threading.Event) -> None:
    body = {"model": "pool", "stream": True, "messages": [{"role": "user", "content": "Go on."}]}
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                for _ in response.iter_lines():
                    pass


def test_the_board_shows_the_pool_and_its_tiers(
    pool_console: Process, page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    stop = threading.Event()
    # Eight clients for four local slots: the rest waits in nobusy's queue or spills.
    clients = [threading.Thread(target=_keep_busy, args=(pool_console.url, stop)) for _ in range(8)]
    for client in clients:
        client.start()
    try:
        page.goto(f"{pool_console.url}/#/status")
        enter_keys(page, admin=ADMIN_KEY)
        page.locator("#status-pool .pool-server[data-server=gpu-a]").wait_for()
        page.locator("#status-pool .pool-server[data-server=gpu-b]").wait_for()
        # Within a few polls (2 s each) the cloud has spilled answers and the split has columns.
        page.wait_for_function(
            "() => document.querySelectorAll('#status-tiers .pool-split rect').length >= 10",
            timeout=40_000,
        )
        page.wait_for_function(
            "() => Number((document.querySelector('#status-tiers .pool-tier[data-tier=\"1\"]')"
            "?.innerText.match(/spill cost ([0-9.]+)/) ?? [0, 0])[1]) > 0",
            timeout=20_000,
        )
        servers = page.inner_text("#status-servers")
        assert "running" in servers and "slots" in servers and "KV" in servers
        tiers = page.inner_text("#status-tiers")
        assert "Tier 0" in tiers and "Tier 1" in tiers and "CNY" in tiers
        assert page.locator("#status-servers .pool-running").count() >= 1
        page.locator("#status-pool").scroll_into_view_if_needed()
        screenshot(page, "console-pool.png")
        page.click("#lang-toggle")
        page.wait_for_function(
            "() => document.querySelector('#status-tiers')?.innerText.includes('层')"
        )
        screenshot(page, "console-pool-zh.png")
    finally:
        stop.set()
        for client in clients:
            client.join()
