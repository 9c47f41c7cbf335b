"""With --workers 2, a key's limits and an upstream's ceiling hold across both processes."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Process, free_port, serve, start_process

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, Process, str]]:
    tmp = tmp_path_factory.mktemp("workers")
    port = free_port()
    args = ["fake-upstream", "--port", str(port), "--capacity", "4", "--chunk-delay", "0.03"]
    fake = start_process(args, "/healthz", tmp / "fake.log", port)
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "nobusy",
            "keys",
            "create",
            "--name",
            "limited",
            "--rpm",
            "3",
            "--data-dir",
            str(tmp / "data"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    unlimited = subprocess.run(
        [
            sys.executable,
            "-m",
            "nobusy",
            "keys",
            "create",
            "--name",
            "free",
            "--data-dir",
            str(tmp / "data"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    config = f"""
upstreams:
  tight: {{kind: openai, base_url: "{fake.url}/v1", default_model: ok, max_concurrency: 4}}
models:
  tight: [tight]
"""
    # --readiness: a flag the workers once missed (they rebuilt their settings from a hand
    # list of NOBUSY_* names); now they receive the resolved settings whole.
    gateway = serve(tmp, config, "--workers", "2", "--readiness", "process")
    yield gateway, fake, made.stdout.strip() + " " + unlimited.stdout.strip()
    gateway.stop()
    fake.stop()


def post(gateway: Process, key: str) -> int:
    # A new connection each time, so the kernel spreads requests over both workers.
    with httpx.Client() as client:
        response = client.post(
            f"{gateway.url}/v1/chat/completions",
            timeout=60,
            headers={"authorization": f"Bearer {key}"},
            json={"model": "tight", "messages": MESSAGES},
        )
        return response.status_code


def test_rpm_holds_across_workers(two_workers: tuple[Process, Process, str]) -> None:
    gateway, _, keys = two_workers
    limited = keys.split()[0]
    statuses = [post(gateway, limited) for _ in range(8)]
    assert statuses.count(200) == 3
    assert statuses.count(429) == 5


def test_upstream_ceiling_holds_across_workers(two_workers: tuple[Process, Process, str]) -> None:
    gateway, fake, keys = two_workers
    free = keys.split()[1]
    httpx.post(f"{fake.url}/_fake/reset")
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda _: post(gateway, free), range(12)))
    assert statuses == [200] * 12
    stats = httpx.get(f"{fake.url}/_fake/stats").json()
    assert stats["rejected"] == 0 and stats["max_in_flight"] <= 4


def test_every_worker_has_the_flags_settings(two_workers: tuple[Process, Process, str]) -> None:
    gateway, _, _ = two_workers
    for _ in range(8):  # a new connection each time, so both workers answer some
        with httpx.Client() as client:
            assert client.get(f"{gateway.url}/readyz").json()["readiness"] == "process"
