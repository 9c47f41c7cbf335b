"""The edge's policies in-process: admin secrets, host names, origins, proxies, file modes."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import cast

import pytest
from pydantic import SecretStr

from nobusy.crypto import load_suite
from nobusy.edge.auth import Authenticator
from nobusy.edge.policy import EdgePolicy
from nobusy.errors import AdminAuthRequired, ConfigError
from nobusy.settings import load_settings
from nobusy.store.audit import AuditLog
from nobusy.store.keys import KeyStore
from nobusy.store.migrations import DB_NAME, open_db

ADMIN_KEY = "edge-admin-key-7d2e4b9a"
EVIL = "https://evil.example"


def test_an_empty_admin_secret_never_matches_even_if_configured() -> None:
    auth = Authenticator(cast(KeyStore, None))
    for authorization in ("", "Bearer ", "Bearer", "bearer  "):
        with pytest.raises(AdminAuthRequired):
            auth.check_admin(authorization, "127.0.0.1", SecretStr(""), proxied=False)
    auth.check_admin(f"Bearer {ADMIN_KEY}", "10.0.0.1", SecretStr(ADMIN_KEY), proxied=False)


def test_host_names_served() -> None:
    policy = EdgePolicy.build(hosts=["gpu-box.lan", ".corp.example"])
    for host in (
        "127.0.0.1:8000",
        "[::1]:8000",
        "10.1.2.3",
        "LOCALHOST",
        "a.localhost:1",
        "gpu-box.lan:8000",
        "corp.example",
        "api.corp.example.",
        None,
    ):
        assert policy.host_allowed(host), host
    for host in (
        "evil.example",
        "localhost.evil.example",
        "gpu-box.lan.evil.example",
        "xcorp.example",
        "",
    ):
        assert not policy.host_allowed(host), host
    assert EdgePolicy.build(hosts=["*"]).host_allowed("anything.example")


def test_origins_allowed() -> None:
    policy = EdgePolicy.build(origins=["https://app.example/"])
    assert policy.origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert policy.origin_allowed("https://app.example", "127.0.0.1:8000")
    assert not policy.origin_allowed("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not policy.origin_allowed("null", "127.0.0.1:8000")
    # A rebinding page is "same origin" with itself: the Host check refuses that one.
    assert policy.origin_allowed("http://evil.example:8000", "evil.example:8000")
    assert EdgePolicy.build(origins=["*"]).origin_allowed(EVIL, "127.0.0.1")


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    none = EdgePolicy.build()
    assert none.client_address("127.0.0.1", "203.0.113.9") == "127.0.0.1"
    proxied = EdgePolicy.build(proxies=["127.0.0.1", "10.0.0.0/8"])
    assert proxied.client_address("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    # A client's own forged entry sits left of what our proxies appended.
    assert proxied.client_address("127.0.0.1", "1.1.1.1, 203.0.113.9, 10.0.0.5") == "203.0.113.9"
    assert proxied.client_address("192.0.2.1", "203.0.113.9") == "192.0.2.1"


def test_existing_loose_databases_are_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / DB_NAME).touch(mode=0o644)
    (data / DB_NAME).chmod(0o644)
    open_db(data).close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in data.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    fresh = tmp_path / "fresh"
    audit = AuditLog(fresh, load_suite("standard", fresh, {}))
    audit.close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert stat.S_IMODE((fresh / "audit.db").stat().st_mode) == 0o600


def test_lists_come_comma_separated_from_the_environment() -> None:
    env = {
        "NOBUSY_ALLOWED_HOSTS": "gpu-box.lan, .corp.example",
        "NOBUSY_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8",
    }
    settings = load_settings(env=env)
    assert settings.allowed_hosts == ("gpu-box.lan", ".corp.example")
    assert settings.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert EdgePolicy.from_settings(settings).client_address("10.1.1.1", "198.51.100.7") == (
        "198.51.100.7"
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [("", "set but empty"), ("  ", "set but empty"), ("short", "at least 12 characters")],
)
def test_an_empty_or_weak_data_key_is_refused_at_start(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(env={"NOBUSY_SECRET_KEY": value})
    assert load_settings(env={"NOBUSY_SECRET_KEY": "correct horse battery staple"})
