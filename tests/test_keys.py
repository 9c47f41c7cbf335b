"""API keys: storage as hashes, lookups from memory, limits validated, and the admin HTTP API."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.testclient import TestClient

from nobusy.api import admin
from nobusy.api import keys as api
from nobusy.edge.auth import Authenticator
from nobusy.errors import (
    InvalidApiKey,
    InvalidRequest,
    KeyExpired,
    KeyNameTaken,
    KeyRevoked,
    NobusyError,
    NotFound,
    StorageUnavailable,
)
from nobusy.keys import parse_duration, sha256_hasher
from nobusy.responses import nobusy_error_handler
from nobusy.store import keys as store_keys
from nobusy.store.keys import KeyStore
from nobusy.store.migrations import NOBUSY, open_db


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[KeyStore]:
    store = KeyStore(tmp_path, clock=clock, refresh_interval=0)
    yield store
    store.close()


def all_bytes(data_dir: Path) -> bytes:
    # The WAL file holds recent commits until a checkpoint: look at every file.
    return b"".join(path.read_bytes() for path in data_dir.iterdir() if path.is_file())


def test_create_get_list_round_trip(store: KeyStore, clock: Clock) -> None:
    key, secret = store.create(
        "team-a",
        priority="high",
        rpm=60,
        tpm=10_000,
        max_concurrency=4,
        quota_tokens=1_000,
        models=["chat", "small", "chat"],
        expires="30d",
        max_wait=2.5,
    )
    assert secret.startswith("nb-") and len(secret) == 46
    assert key.id.startswith("key_") and len(key.id) == 14
    assert key.prefix == secret[3:11]
    assert (key.priority, key.rpm, key.tpm, key.max_concurrency) == ("high", 60, 10_000, 4)
    assert (key.quota_tokens, key.balance, key.max_wait) == (1_000, 1_000, 2.5)
    assert key.models == ("chat", "small")
    assert key.created_at == clock.now and key.expires_at == clock.now + timedelta(days=30)
    assert key.revoked_at is None and key.last_used_at is None
    assert store.get(key.id) == store.get("team-a") == key
    assert store.list() == [key]
    assert store.authenticate(secret) == key
    assert key.allows_model("chat") and not key.allows_model("other")


def test_defaults_are_unlimited(store: KeyStore) -> None:
    key, _ = store.create("plain")
    assert key.priority == "normal"
    assert key.rpm is key.tpm is key.max_concurrency is key.quota_tokens is key.balance is None
    assert key.models is None and key.expires_at is None and key.max_wait is None
    assert key.allows_model("anything")


def test_only_the_hash_is_stored(tmp_path: Path, store: KeyStore) -> None:
    key, secret = store.create("team-a")
    raw = all_bytes(tmp_path)
    assert secret.encode() not in raw and secret[3:].encode() not in raw
    assert key.hash == "sm3:" + hashlib.new("sm3", secret.encode()).hexdigest()  # 国密 default
    assert key.hash.encode() in raw
    assert secret not in repr(key) and key.hash not in repr(key)


def test_lookup_compares_in_constant_time(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _, secret = store.create("team-a")
    calls: list[tuple[bytes, bytes]] = []
    real = store_keys.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(store_keys.hmac, "compare_digest", spy)
    store.authenticate(secret)
    assert len(calls) == 1


def test_authenticate_runs_no_sql_between_checks(tmp_path: Path) -> None:
    store = KeyStore(tmp_path, refresh_interval=60)
    try:
        _, secret = store.create("team-a")
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)
        for _ in range(100):
            store.authenticate(secret)
            assert store.any_keys()
        assert statements == []
    finally:
        store.close()


def test_another_process_revoking_is_seen(tmp_path: Path) -> None:
    server = KeyStore(tmp_path, refresh_interval=0.05)
    cli = KeyStore(tmp_path)
    try:
        key, secret = server.create("team-a")
        cli.revoke(key.id)
        server.authenticate(secret)  # within the refresh interval: the cached copy
        deadline = datetime.now(UTC) + timedelta(seconds=2)
        while datetime.now(UTC) < deadline:
            try:
                server.authenticate(secret)
            except KeyRevoked:
                break
        else:
            pytest.fail("the revocation was not noticed")
    finally:
        server.close()
        cli.close()


def test_refused_keys_say_why(store: KeyStore, clock: Clock) -> None:
    revoked, revoked_secret = store.create("gone")
    store.revoke("gone")
    _, expiring = store.create("brief", expires="1h")
    clock.now += timedelta(hours=2)
    cases: list[tuple[str, type[InvalidApiKey], str, str]] = [
        ("", InvalidApiKey, "invalid_api_key", "No API key given"),
        ("sk-" + "a" * 43, InvalidApiKey, "invalid_api_key", "'nb-' followed by 43"),
        ("nb-short", InvalidApiKey, "invalid_api_key", "Malformed API key"),
        ("nb-" + "a" * 42 + "!", InvalidApiKey, "invalid_api_key", "Malformed API key"),
        ("nb-" + "a" * 43, InvalidApiKey, "invalid_api_key", "Unknown API key"),
        (revoked_secret, KeyRevoked, "key_revoked", "was revoked at 2030-01-01 00:00:00 UTC"),
        (expiring, KeyExpired, "key_expired", "expired at 2030-01-01 01:00:00 UTC"),
    ]
    for secret, error, code, says in cases:
        with pytest.raises(error) as caught:
            store.authenticate(secret)
        assert type(caught.value) is error
        assert (caught.value.status_code, caught.value.code) == (401, code)
        assert says in caught.value.message
        if secret:
            assert secret not in caught.value.message
    # Whoever holds a revoked secret learns nothing about whose key it was.
    refused = str(pytest.raises(KeyRevoked, store.authenticate, revoked_secret).value)
    assert revoked.id not in refused and "gone" not in refused


def test_expiry_can_be_extended(store: KeyStore, clock: Clock) -> None:
    _, secret = store.create("brief", expires=timedelta(minutes=90))
    clock.now += timedelta(minutes=91)
    with pytest.raises(KeyExpired):
        store.authenticate(secret)
    store.update("brief", expires="1d")
    assert store.authenticate(secret).expires_at == clock.now + timedelta(days=1)
    store.update("brief", expires=None)
    assert store.authenticate(secret).expires_at is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"rpm": -1}, "rpm"),
        ({"rpm": 0}, "rpm"),
        ({"tpm": 1.5}, "tpm"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"quota_tokens": 2**60}, "quota_tokens"),
        ({"priority": "urgent"}, "priority"),
        ({"models": []}, "models"),
        ({"models": ["chat", ""]}, "models"),
        ({"models": "chat"}, "models"),
        ({"expires": "soon"}, "expires"),
        ({"expires": "0d"}, "expires"),
        ({"expires": "999999999w"}, "expires"),
        ({"expires": timedelta(seconds=-1)}, "expires"),
        ({"max_wait": -1}, "max_wait"),
        ({"max_wait": float("nan")}, "max_wait"),
    ],
)
def test_invalid_values_are_named_and_write_nothing(
    tmp_path: Path, store: KeyStore, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        store.create("team-a", **fields)
    assert caught.value.param == param and param in caught.value.message
    assert store.list() == []
    key, _ = store.create("team-b")
    with pytest.raises(InvalidRequest):
        store.update(key.id, name="renamed", **fields)
    assert store.get(key.id) == key


@pytest.mark.parametrize("name", ["", " padded", "a/b", "x" * 65, "key_0123456789", "nb-abc"])
def test_invalid_names(store: KeyStore, name: str) -> None:
    with pytest.raises(InvalidRequest, match="name"):
        store.create(name)


def test_unknown_fields_and_empty_updates_are_refused(store: KeyStore) -> None:
    key, _ = store.create("team-a")
    with pytest.raises(InvalidRequest, match="unknown field") as caught:
        store.update(key.id, colour="blue")
    assert caught.value.param == "colour"
    with pytest.raises(InvalidRequest, match="Nothing to update"):
        store.update(key.id)


def test_names_are_unique(store: KeyStore) -> None:
    store.create("team-a")
    other, _ = store.create("team-b")
    with pytest.raises(KeyNameTaken) as caught:
        store.create("team-a")
    assert caught.value.status_code == 409
    with pytest.raises(KeyNameTaken):
        store.update(other.id, name="team-a")
    assert store.update(other.id, name="team-b").name == "team-b"  # its own name is free
    assert len(store.list()) == 2


def test_unknown_key_is_not_found(store: KeyStore) -> None:
    for call in (store.get, store.revoke, lambda k: store.update(k, rpm=1)):
        with pytest.raises(NotFound, match="nobody"):
            call("nobody")


def test_update_changes_and_clears_limits(store: KeyStore) -> None:
    key, secret = store.create("team-a", rpm=10, models=["chat"], quota_tokens=100)
    store.charge(key.id, 30)
    updated = store.update("team-a", name="team-z", rpm=None, models=None, priority="low")
    assert (updated.name, updated.rpm, updated.models, updated.priority) == (
        "team-z",
        None,
        None,
        "low",
    )
    assert store.authenticate(secret).name == "team-z"
    assert store.update("team-z", quota_tokens=200).balance == 170  # used tokens stay used
    assert store.update("team-z", quota_tokens=None).balance is None


def test_topup(store: KeyStore) -> None:
    key, _ = store.create("team-a", quota_tokens=100)
    store.charge(key.id, 40)
    topped = store.topup("team-a", 50)
    assert (topped.quota_tokens, topped.balance) == (150, 110)
    unlimited, _ = store.create("team-b")
    with pytest.raises(InvalidRequest, match="no token quota"):
        store.topup(unlimited.id, 50)
    for bad in (0, -5):
        with pytest.raises(InvalidRequest) as caught:
            store.topup(key.id, bad)
        assert caught.value.param == "tokens"
    assert store.get(key.id) == topped


def test_charge_overdraws_by_the_last_request_and_marks_use(store: KeyStore, clock: Clock) -> None:
    key, secret = store.create("team-a", quota_tokens=100)
    assert store.charge(key.id, 60).balance == 40
    clock.now += timedelta(minutes=5)
    charged = store.charge(key.id, 70)
    assert charged.balance == -30 and charged.last_used_at == clock.now
    assert store.authenticate(secret) == charged == store.get(key.id)  # the cache is patched
    assert store.topup(key.id, 50).balance == 20  # the debt is paid first
    unlimited, _ = store.create("team-b")
    assert store.charge(unlimited.id, 1_000).balance is None
    with pytest.raises(NotFound):
        store.charge("key_0000000000", 1)
    with pytest.raises(InvalidRequest):
        store.charge(key.id, -1)


def test_revoke_is_final_and_idempotent(store: KeyStore, clock: Clock) -> None:
    key, _ = store.create("team-a")
    first = store.revoke(key.id)
    clock.now += timedelta(days=1)
    assert store.revoke("team-a").revoked_at == first.revoked_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert first.status(clock.now) == "revoked"


def test_any_keys_counts_revoked_keys(store: KeyStore) -> None:
    assert not store.any_keys()
    key, _ = store.create("team-a")
    store.revoke(key.id)
    # Revoking the last key must not open the server to everyone.
    assert store.any_keys()


def test_keys_made_under_an_earlier_hasher_keep_verifying(tmp_path: Path) -> None:
    def old(data: bytes) -> str:
        return "md5:" + hashlib.md5(data).hexdigest()

    before = KeyStore(tmp_path, old)
    old_key, old_secret = before.create("old")
    before.close()
    after = KeyStore(tmp_path, [sha256_hasher, old])
    try:
        assert after.authenticate(old_secret) == old_key
        new_key, new_secret = after.create("new")
        assert new_key.hash.startswith("sha256:")
        assert after.authenticate(new_secret) == new_key
    finally:
        after.close()
    only_new = KeyStore(tmp_path)
    try:
        with pytest.raises(InvalidApiKey, match="Unknown"):
            only_new.authenticate(old_secret)
    finally:
        only_new.close()


def test_parse_duration() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "30", "d", "1y", "-1d", "0s", "1.5h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_database_is_wal_and_migrated_once(tmp_path: Path) -> None:
    db = open_db(tmp_path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        applied = [m.name for m in NOBUSY.applied(db)]
        assert applied[:2] == ["m001_keys", "m002_usage"] and len(set(applied)) == len(applied)
        assert NOBUSY.pending(db) == []
        columns = {row[1] for row in db.execute("PRAGMA table_info(usage)")}
        assert {"id", "time", "key_id", "tried", "queue_ms", "overflow"} <= columns
    finally:
        db.close()
    db = open_db(tmp_path)
    try:
        assert [m.name for m in NOBUSY.applied(db)] == applied  # nothing applied twice
    finally:
        db.close()


def test_unopenable_database_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(NobusyError, match="cannot open the database"):
        open_db(tmp_path / "file")


def test_locked_database_is_a_clear_error(tmp_path: Path, store: KeyStore) -> None:
    key, secret = store.create("team-a", quota_tokens=100)
    store._conn.execute("PRAGMA busy_timeout = 50")
    holder = sqlite3.connect(tmp_path / "nobusy.db")
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StorageUnavailable, match="locked"):
            store.create("team-b")
        with pytest.raises(StorageUnavailable, match="locked"):
            store.charge(key.id, 1)
        assert store.authenticate(secret) == key  # reading goes on meanwhile
    finally:
        holder.rollback()
        holder.close()
    # Nothing was left half-open: both work once the lock is free.
    assert store.create("team-b")[0].name == "team-b"
    assert store.charge(key.id, 1).balance == 99


# --- The admin HTTP API, mounted on a small app as create_app will mount it. --------------------

ADMIN = {"authorization": "Bearer admin-key"}


@pytest.fixture
def client(store: KeyStore) -> TestClient:
    app = Starlette(
        routes=[admin.mount(api.routes)],
        exception_handlers={NobusyError: nobusy_error_handler},
    )
    settings = SimpleNamespace(admin_key=SecretStr("admin-key"))
    app.state.nobusy = SimpleNamespace(keys=store, settings=settings, auth=Authenticator(store))
    return TestClient(app, headers=ADMIN)


def error_of(response: Any, status: int, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    message: str = error["message"]
    return message


def test_api_create_returns_the_secret_once(client: TestClient, store: KeyStore) -> None:
    response = client.post(
        "/v1/nobusy/keys", json={"name": "team-a", "rpm": 60, "models": ["chat"], "expires": "7d"}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    secret = created.pop("secret")
    assert store.authenticate(secret).id == created["id"]
    assert created["object"] == "nobusy.key" and created["status"] == "active"
    assert created["prefix"] == secret[:11] and "hash" not in created
    assert created["rpm"] == 60 and created["models"] == ["chat"]
    assert created["expires_at"] - created["created_at"] == 7 * 86400
    listed = client.get("/v1/nobusy/keys").json()
    assert listed["object"] == "list" and listed["data"] == [created]
    assert secret not in client.get("/v1/nobusy/keys").text
    assert client.get("/v1/nobusy/keys/team-a").json() == created
    assert client.get(f"/v1/nobusy/keys/{created['id']}").json() == created


def test_api_update_revoke_topup(client: TestClient) -> None:
    client.post("/v1/nobusy/keys", json={"name": "team-a", "quota_tokens": 100, "rpm": 5})
    updated = client.patch("/v1/nobusy/keys/team-a", json={"rpm": None, "priority": "high"})
    assert updated.status_code == 200 and updated.json()["rpm"] is None
    assert updated.json()["priority"] == "high"
    topped = client.post("/v1/nobusy/keys/team-a/topup", json={"tokens": 50}).json()
    assert (topped["quota_tokens"], topped["balance"]) == (150, 150)
    revoked = client.post("/v1/nobusy/keys/team-a/revoke").json()
    assert revoked["status"] == "revoked" and revoked["revoked_at"] is not None


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("POST", "/v1/nobusy/keys", b"", 400, None),
        ("POST", "/v1/nobusy/keys", b"{", 400, None),
        ("POST", "/v1/nobusy/keys", b"[1]", 400, None),
        ("POST", "/v1/nobusy/keys", b'{"rpm": 5}', 400, "name"),
        ("POST", "/v1/nobusy/keys", b'{"name": "x", "rpm": -1}', 400, "rpm"),
        ("POST", "/v1/nobusy/keys", b'{"name": "x", "self": 1}', 400, "self"),
        ("POST", "/v1/nobusy/keys", b'{"name": "team-a"}', 409, "name"),
        ("PATCH", "/v1/nobusy/keys/team-a", b'{"models": "chat"}', 400, "models"),
        ("PATCH", "/v1/nobusy/keys/team-a", b'{"id_or_name": "x"}', 400, "id_or_name"),
        ("PATCH", "/v1/nobusy/keys/team-a", b"{}", 400, None),
        ("PATCH", "/v1/nobusy/keys/nobody", b'{"rpm": 1}', 404, "key"),
        ("GET", "/v1/nobusy/keys/nobody", None, 404, "key"),
        ("POST", "/v1/nobusy/keys/nobody/revoke", None, 404, "key"),
        ("POST", "/v1/nobusy/keys/team-a/topup", b'{"tokens": "5"}', 400, "tokens"),
        ("POST", "/v1/nobusy/keys/team-a/topup", b'{"tokens": 5, "x": 1}', 400, "tokens"),
        ("POST", "/v1/nobusy/keys/team-a/topup", b'{"tokens": 5}', 400, "key"),  # unlimited
    ],
)
def test_api_bad_input_is_a_clear_4xx(
    client: TestClient,
    store: KeyStore,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    param: str | None,
) -> None:
    store.create("team-a")
    response = client.request(method, path, content=body)
    assert error_of(response, status, param)
    assert [key.name for key in store.list()] == ["team-a"]


def test_api_needs_the_admin_key(client: TestClient, store: KeyStore) -> None:
    store.create("team-a")
    for headers in ({"authorization": ""}, {"authorization": "Bearer wrong"}):
        response = client.get("/v1/nobusy/keys", headers=headers)
        assert "admin key" in error_of(response, 401)
        response = client.post("/v1/nobusy/keys", headers=headers, json={"name": "team-b"})
        error_of(response, 401)
    assert len(store.list()) == 1
