"""The status board with shared state: every replica in a table, Redis's health as a pill."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page

from tests.conftest import Process, free_port, serve
from tests.redis_server import RedisServer
from tests.web.conftest import ADMIN_KEY, CONSOLE_CONFIG, enter_keys


@pytest.fixture(scope="module")
def fleet(
    fake_upstream: Process, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Process]]:
    """Two replicas of the console's gateway on one Redis."""
    doomed = f"http://127.0.0.1:{free_port()}/v1"
    config = CONSOLE_CONFIG.format(admin=ADMIN_KEY, fake=f"{fake_upstream.url}/v1", doomed=doomed)
    started: list[Process] = []
    try:
        for name in ("board-a", "board-b"):
            env = {"NOBUSY_STATE": redis_server.url, "NOBUSY_REPLICA_ID": name}
            started.append(serve(tmp_path_factory.mktemp(name), config, env=env))
        yield started
    finally:
        for process in started:
            process.stop()


def test_the_board_lists_every_replica_and_redis(fleet: list[Process], page: Page) -> None:
    one, _ = fleet
    page.goto(f"{one.url}/#/status")
    enter_keys(page, admin=ADMIN_KEY)
    # The other replica shows once its heartbeat has been read (every 2 s).
    page.wait_for_selector("#status-replicas tr[data-replica=board-b]", timeout=8_000)
    mine = page.locator("#status-replicas tr[data-replica=board-a]")
    assert "this one" in mine.inner_text()
    redis = page.locator("#status-backends .backend")
    assert redis.get_attribute("data-status") == "ok"
    assert redis.inner_text() == "redis: ok"
    status = httpx.get(
        f"{one.url}/v1/nobusy/status", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ).json()
    # Other tests' replicas may share this Redis (the session's): these two are there.
    assert {"board-a", "board-b"} <= {r["id"] for r in status["replicas"]}
