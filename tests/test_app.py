"""``create_app``: what start-up opens is closed, whichever step fails; admin routes are guarded.

In-process: the app's lifespan is entered directly, with every resource it opens watched by a
spy that notes the opening and the closing, and with a failure injected at each step in turn.
Besides the order of the notes, the resources themselves are checked: no writer thread left
running, no file of the data dir left open, the upstream's session closed, no task left.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

import nobusy.state as state_module
import nobusy.store.backends as backends_module
from nobusy.admission.capacity import Capacity
from nobusy.app import create_app
from nobusy.routing.checks import Prober
from nobusy.settings import Settings, load_settings
from nobusy.upstreams.openai import Upstream as OpenAIUpstream

# Every resource start-up holds, in the order it opens them. The key store is opened by
# create_app itself (the middleware's authenticator needs it), the rest by the lifespan.
ORDER = [
    "keys",
    "usage log",
    "audit",
    "ledger",
    "limits",
    "offload",
    "upstream",
    "shared slots",
    "pump",
    "prober",
    "pruning",
]
STEPS = ORDER[1:]
# Steps that fail after they opened something (a start that got halfway); the others fail
# before, as a constructor that raises leaves nothing to close.
FAIL_AFTER_OPENING = {"upstream", "prober"}
TASKS = {"nobusy-pump": "pump", "nobusy-audit-pruning": "pruning"}


class Boom(Exception):
    """The failure injected at one step of start-up."""


class Journal:
    """What start-up opened and shutdown closed, in order; the step ``fail_at`` raises."""

    def __init__(self, fail_at: str | None) -> None:
        self.fail_at = fail_at
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.sessions: list[aiohttp.ClientSession] = []

    def step(self, name: str) -> None:
        if name == self.fail_at:
            raise Boom(name)


def spy_class(
    monkeypatch: pytest.MonkeyPatch,
    journal: Journal,
    module: Any,
    attribute: str,
    name: str,
    close: str = "close",
) -> None:
    """Replace ``module.attribute`` (a class) by a subclass that notes its opening and closing."""
    cls = getattr(module, attribute)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        journal.step(name)
        cls.__init__(self, *args, **kwargs)
        journal.opened.append(name)

    def closing(self: Any, *args: Any, **kwargs: Any) -> Any:
        journal.closed.append(name)
        return getattr(cls, close)(self, *args, **kwargs)

    spy = type(cls.__name__, (cls,), {"__init__": __init__, close: closing})
    monkeypatch.setattr(module, attribute, spy)


def watch(monkeypatch: pytest.MonkeyPatch, journal: Journal) -> None:
    """Put a spy on every resource start-up opens."""
    # Opened where the backend is chosen (SQLite here: no `store`).
    spy_class(monkeypatch, journal, backends_module, "KeyStore", "keys")
    spy_class(monkeypatch, journal, backends_module, "UsageLog", "usage log")
    spy_class(monkeypatch, journal, backends_module, "AuditLog", "audit")
    spy_class(monkeypatch, journal, state_module, "Ledger", "ledger", close="flush_charges")
    spy_class(monkeypatch, journal, state_module, "SharedKeyLimits", "limits")
    spy_class(monkeypatch, journal, state_module, "Offload", "offload")
    spy_class(monkeypatch, journal, state_module, "SharedSlots", "shared slots")

    start, aclose = OpenAIUpstream.start, OpenAIUpstream.aclose

    async def start_upstream(self: OpenAIUpstream) -> None:
        await start(self)
        journal.sessions.append(self._client())  # a start that opens a session, as warming would
        journal.opened.append("upstream")
        journal.step("upstream")

    async def close_upstream(self: OpenAIUpstream) -> None:
        journal.closed.append("upstream")
        await aclose(self)

    monkeypatch.setattr(OpenAIUpstream, "start", start_upstream)
    monkeypatch.setattr(OpenAIUpstream, "aclose", close_upstream)

    pump = Capacity.pump

    def start_pump(self: Capacity) -> Coroutine[Any, Any, None]:
        journal.step("pump")
        journal.opened.append("pump")
        return pump(self)

    monkeypatch.setattr(Capacity, "pump", start_pump)

    prune = state_module._prune_audit

    def start_pruning(audit: Any) -> Coroutine[Any, Any, None]:
        journal.step("pruning")
        journal.opened.append("pruning")
        return prune(audit)

    monkeypatch.setattr(state_module, "_prune_audit", start_pruning)

    cancel = state_module._cancel

    async def cancelling(task: asyncio.Task[None]) -> None:
        journal.closed.append(TASKS[task.get_name()])
        await cancel(task)

    monkeypatch.setattr(state_module, "_cancel", cancelling)

    prober_start, prober_stop = Prober.start, Prober.stop

    def start_prober(self: Prober) -> None:
        prober_start(self)
        journal.opened.append("prober")
        journal.step("prober")

    async def stop_prober(self: Prober) -> None:
        journal.closed.append("prober")
        await prober_stop(self)

    monkeypatch.setattr(Prober, "start", start_prober)
    monkeypatch.setattr(Prober, "stop", stop_prober)


def full_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings under which start-up opens every resource it can: several workers (shared
    limits and slots), the audit log, a probed upstream with a ceiling."""
    config = tmp_path / "nobusy.yaml"
    config.write_text(
        """
audit: {enabled: true}
upstreams:
  a: {kind: openai, base_url: "http://127.0.0.1:9/v1", default_model: m,
      max_concurrency: 4, health_check_interval: 3600}
models:
  m: {routes: [a/m]}
"""
    )
    return load_settings(config, env={}, data_dir=tmp_path / "data", **overrides)


def open_files(under: Path) -> list[str]:
    """The files under ``under`` this process holds open."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(str(under)):
            found.append(target)
    return found


def nobusy_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("nobusy-")}


async def run_lifespan(app: Starlette, serving: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async with app.router.lifespan_context(app):
        await serving()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="open files are read in /proc")
@pytest.mark.parametrize("fail_at", [*STEPS, None], ids=[*STEPS, "shutdown"])
async def test_what_start_up_opened_is_closed_in_reverse(
    fail_at: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(fail_at)
    watch(monkeypatch, journal)
    settings = full_settings(tmp_path, workers=2)
    threads, tasks = nobusy_threads(), asyncio.all_tasks()

    async def serve_a_moment() -> None:
        await asyncio.sleep(0.05)  # the background tasks are running, the pruning has run

    app = create_app(settings)
    assert open_files(settings.data_dir)  # the key store, from create_app
    if fail_at is None:
        await run_lifespan(app, serve_a_moment)
        opened = ORDER
    else:
        with pytest.raises(Boom, match=fail_at):
            await run_lifespan(app, serve_a_moment)
        failed = ORDER.index(fail_at)
        opened = ORDER[: failed + 1 if fail_at in FAIL_AFTER_OPENING else failed]
    assert journal.opened == opened
    assert journal.closed == opened[::-1]
    # The resources themselves, not only the notes.
    assert nobusy_threads() <= threads
    assert open_files(settings.data_dir) == []
    assert all(session.closed for session in journal.sessions)
    assert asyncio.all_tasks() <= tasks


# --- The admin mount --------------------------------------------------------------------------

ADMIN_KEY = "admin-key-0123456789"
ADMIN_ROUTES = [
    ("GET", "/v1/nobusy/upstreams"),
    ("POST", "/v1/nobusy/upstreams/all/reset"),
    ("GET", "/v1/nobusy/keys"),
    ("POST", "/v1/nobusy/keys"),
    ("GET", "/v1/nobusy/keys/team-a"),
    ("PATCH", "/v1/nobusy/keys/team-a"),
    ("POST", "/v1/nobusy/keys/team-a/revoke"),
    ("POST", "/v1/nobusy/keys/team-a/topup"),
    ("GET", "/v1/nobusy/status"),
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(full_settings(tmp_path, admin_key=ADMIN_KEY))
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_every_admin_route_is_guarded(client: TestClient, method: str, path: str) -> None:
    for authorization in ("", "Bearer wrong"):
        response = client.request(method, path, headers={"authorization": authorization})
        assert response.status_code == 401, response.text
        assert "admin key" in response.json()["error"]["message"]


def test_the_admin_key_reaches_the_handlers(client: TestClient) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert client.get("/v1/nobusy/upstreams", headers=admin).json()["object"] == "list"
    assert client.get("/v1/nobusy/keys", headers=admin).json() == {"object": "list", "data": []}
    assert client.get("/v1/nobusy/status", headers=admin).json()["object"] == "nobusy.status"
    reset = client.post("/v1/nobusy/upstreams/nothing/reset", headers=admin)
    assert reset.status_code == 404 and reset.json()["error"]["param"] == "name"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nobusy/nothing", 404),
        ("GET", "/v1/nobusy/", 404),
        ("DELETE", "/v1/nobusy/keys", 405),
        ("GET", "/v1/nobusy/upstreams/all/reset", 405),
    ],
)
def test_paths_the_mount_does_not_serve_are_answered_unchecked(
    client: TestClient, method: str, path: str, status: int
) -> None:
    # As when each handler checked the key: a 404 or a 405 comes before the admin check.
    response = client.request(method, path)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == {404: "not_found", 405: "method_not_allowed"}[status]


def test_the_public_routes_are_outside_the_mount(client: TestClient) -> None:
    for path in ("/healthz", "/openapi.json", "/v1/models", "/metrics", "/"):
        assert client.get(path).status_code == 200, path
