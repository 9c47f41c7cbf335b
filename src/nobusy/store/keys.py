"""The API keys in ``data_dir/nobusy.db``, checked from memory on the request path.

``authenticate`` reads an in-memory copy of the keys, reloaded when ``PRAGMA data_version``
says another process (the CLI, another worker) changed the database; it looks at most once per
``refresh_interval``. Management (create, update, revoke, top up) writes through to SQLite in
one transaction each, after ``nobusy.keys`` has checked every field.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from nobusy.errors import (
    InvalidApiKey,
    InvalidRequest,
    KeyExpired,
    KeyNameTaken,
    KeyRevoked,
    NotFound,
    StorageUnavailable,
)
from nobusy.keys import (
    EDITABLE,
    MAX_INT,
    Hasher,
    Key,
    bad_field,
    check_count,
    check_money,
    sha256_hasher,
    show,
    sm3_hasher,
    to_columns,
    utcnow,
)
from nobusy.money.budgets import period_start
from nobusy.store.migrations import open_db
from nobusy.store.sqlite import parse_timestamp, timestamp, transaction

__all__ = ["KeyStore", "index", "new_id", "to_key"]

log = logging.getLogger("nobusy")

_SECRET = re.compile(r"nb-[A-Za-z0-9_-]{43}")
_COLUMNS = ", ".join(f.name for f in fields(Key))


def index(keys: Iterable[Key]) -> tuple[dict[str, Key], dict[str, list[Key]]]:
    """The keys by id and by prefix (the 8 characters after ``nb-``), in the given order."""
    by_id = {key.id: key for key in keys}
    by_prefix: dict[str, list[Key]] = {}
    for key in by_id.values():
        by_prefix.setdefault(key.prefix, []).append(key)
    return by_id, by_prefix


def to_key(row: Sequence[object]) -> Key:
    values = dict(zip((f.name for f in fields(Key)), row, strict=True))
    for name in ("created_at", "expires_at", "revoked_at", "last_used_at", "budget_since"):
        values[name] = parse_timestamp(cast("str | None", values[name]))
    models = cast("str | None", values["models"])
    values["models"] = None if models is None else tuple(json.loads(models))
    return Key(**values)  # type: ignore[arg-type]


class KeyStore:
    """The keys in ``data_dir/nobusy.db``; ``hashers[0]`` hashes new keys, all of them verify."""

    _ORDER = "rowid"  # the column that orders keys by creation
    _conn: Any  # sqlite3.Connection here; the statements are shared with other backends

    def __init__(
        self,
        data_dir: Path,
        hashers: Hasher | Sequence[Hasher] = (sm3_hasher, sha256_hasher),
        *,
        refresh_interval: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._setup(hashers, refresh_interval, clock)
        self._db = open_db(data_dir)
        self._conn = self._db.conn
        with self._lock, self._translated():
            self._reload()

    def _setup(
        self,
        hashers: Hasher | Sequence[Hasher],
        refresh_interval: float,
        clock: Callable[[], datetime],
    ) -> None:
        """What every backend of the keys holds before it opens its database."""
        order = [hashers] if callable(hashers) else list(hashers)
        if not order:
            raise ValueError("KeyStore needs at least one hasher")
        self._hasher, self._algorithm = order[0], _algorithm(order[0])
        self._hashers = {_algorithm(h): h for h in reversed(order)}  # the first one wins
        self._refresh_interval = refresh_interval
        self._clock = clock
        self._lock = threading.RLock()
        self._by_id: dict[str, Key] = {}
        self._by_prefix: dict[str, list[Key]] = {}
        self._checked = time.monotonic()
        self._version = -1

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    async def watch(self) -> None:
        """Keep the copy fresh in the background: nothing to do here, ``authenticate`` looks at
        SQLite's data_version itself (a backend across the network refreshes in this task)."""

    # Hot path: no SQL but a data_version look once per refresh_interval.

    def authenticate(self, secret: str) -> Key:
        """The active key for ``secret``; raises InvalidApiKey, KeyRevoked or KeyExpired."""
        if not secret:
            raise InvalidApiKey("No API key given: send it as 'Authorization: Bearer nb-...'.")
        if not _SECRET.fullmatch(secret):
            raise InvalidApiKey(
                "Malformed API key: a nobusy key is 'nb-' followed by 43 characters from "
                "A-Z, a-z, 0-9, '-' and '_'."
            )
        self._maybe_refresh()
        data = secret.encode()
        digests = {self._algorithm: self._hasher(data)}  # the same work, known key or not
        for key in self._by_prefix.get(secret[3:11], ()):
            algorithm = _algorithm_of(key.hash)
            if algorithm not in digests and algorithm in self._hashers:
                digests[algorithm] = self._hashers[algorithm](data)
            digest = digests.get(algorithm)
            if digest is not None and hmac.compare_digest(digest.encode(), key.hash.encode()):
                return self._usable(key)
        raise InvalidApiKey(
            "Unknown API key: check that it was copied whole, or ask for a new one."
        )

    def any_keys(self) -> bool:
        """True once any key exists (revoked ones too): from then on every request needs one."""
        self._maybe_refresh()
        return bool(self._by_id)

    def active_count(self) -> int:
        """Keys that still open the door: neither revoked nor expired."""
        with self._lock, self._translated():
            self._reload()
            now = self._clock()
            return sum(1 for key in self._by_id.values() if key.status(now) == "active")

    def _usable(self, key: Key) -> Key:
        # The messages never name the key: whoever holds a leaked secret learns nothing more.
        status = key.status(self._clock())
        if status == "revoked":
            raise KeyRevoked(
                f"This API key was revoked at {_when(key.revoked_at)}; ask for a new one."
            )
        if status == "expired":
            raise KeyExpired(
                f"This API key expired at {_when(key.expires_at)}; "
                "ask for a new one or an extension."
            )
        return key

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        # A busy lock means a write of ours is under way, and it reloads when done.
        if now - self._checked < self._refresh_interval or not self._lock.acquire(False):
            return
        try:
            self._checked = now
            if self._data_version() != self._version:
                self._reload()
        except sqlite3.Error as exc:
            log.warning("could not reload API keys, using the last copy: %s", exc)
        finally:
            self._lock.release()

    # Management: reads go to the database, so they see other processes' writes at once.

    def list(self) -> list[Key]:
        """Every key, revoked and expired ones too, oldest first."""
        with self._lock, self._translated():
            self._reload()
            return list(self._by_id.values())

    def get(self, id_or_name: str) -> Key:
        """One key by id or name; raises NotFound."""
        with self._lock, self._translated():
            return self._find(id_or_name)

    def create(
        self,
        name: str,
        *,
        priority: str = "normal",
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        quota_tokens: int | None = None,
        models: Sequence[str] | None = None,
        expires: timedelta | str | None = None,
        max_wait: float | None = None,
        budget: object = None,
        budget_period: str | None = None,
        group: str | None = None,
    ) -> tuple[Key, str]:
        """A new key and its secret, which is not stored and cannot be shown again."""
        now = self._clock()
        given = dict(
            name=name, priority=priority, rpm=rpm, tpm=tpm, max_concurrency=max_concurrency,
            quota_tokens=quota_tokens, models=models, expires=expires, max_wait=max_wait,
            budget=budget, budget_period=budget_period, group=group,
        )  # fmt: skip
        columns = to_columns(given, now)
        secret = "nb-" + secrets.token_urlsafe(32)
        columns.update(
            prefix=secret[3:11],
            hash=self._hasher(secret.encode()),
            balance=columns["quota_tokens"],
            created_at=timestamp(now),
        )
        with self._writing() as conn:
            self._check_name_free(name, None)
            self._group_of(columns)
            columns["id"] = key_id = new_id(conn)
            names = ", ".join(columns)
            marks = ", ".join("?" * len(columns))
            conn.execute(f"INSERT INTO keys ({names}) VALUES ({marks})", list(columns.values()))
        log.info("created API key %s (%s)", key_id, name)
        return self._by_id[key_id], secret

    def update(self, id_or_name: str, /, **changes: object) -> Key:
        """Change the given fields; None removes a limit, ``expires`` counts from now."""
        columns = to_columns(changes, self._clock())
        if not columns:
            raise InvalidRequest(f"Nothing to update: give any of {', '.join(EDITABLE)}.")
        with self._writing() as conn:
            key = self._find(id_or_name)
            if "name" in columns:
                self._check_name_free(cast(str, columns["name"]), key.id)
            self._group_of(columns)
            if "quota_tokens" in columns:
                columns["balance"] = _rebalance(key, cast("int | None", columns["quota_tokens"]))
            assignments = ", ".join(f"{name} = ?" for name in columns)
            conn.execute(f"UPDATE keys SET {assignments} WHERE id = ?", [*columns.values(), key.id])
        log.info("updated API key %s: %s", key.id, ", ".join(sorted(changes)))
        return self._by_id[key.id]

    def revoke(self, id_or_name: str) -> Key:
        """Revoke a key for good; revoking it again keeps the first time."""
        with self._writing() as conn:
            key = self._find(id_or_name)
            conn.execute(
                "UPDATE keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
                (timestamp(self._clock()), key.id),
            )
        log.info("revoked API key %s (%s)", key.id, key.name)
        now = self._clock()
        if not any(k.status(now) == "active" for k in self._by_id.values()):
            log.warning(
                "no active API key is left: every request is refused until one is created "
                "(nobusy keys create --name NAME)"
            )
        return self._by_id[key.id]

    def topup(self, id_or_name: str, tokens: int) -> Key:
        """Add ``tokens`` to the key's balance and to its quota."""
        count = check_count("tokens", tokens)
        with self._writing() as conn:
            key = self._find(id_or_name)
            if key.revoked_at is not None:
                # Tokens on a revoked key could never be spent: refuse rather than take them.
                raise InvalidRequest(
                    f"Key {key.name} ({key.id}) is revoked: a top-up could never be spent. "
                    "Create a new key instead.",
                    param="key",
                )
            if key.quota_tokens is None or key.balance is None:
                raise InvalidRequest(
                    f"Key {key.name} has no token quota (it is unlimited): set quota_tokens "
                    "to give it one.",
                    param="key",
                )
            if key.quota_tokens + cast(int, count) > MAX_INT:
                raise bad_field("tokens", "the quota would exceed 2**53")
            conn.execute(
                "UPDATE keys SET quota_tokens = quota_tokens + ?, balance = balance + ? "
                "WHERE id = ?",
                (count, count, key.id),
            )
        return self._by_id[key.id]

    def topup_money(self, id_or_name: str, amount: object) -> Key:
        """Add ``amount`` (in pricing.currency) to the key's money budget."""
        micros = cast(int, check_money("money", amount, positive=True))
        with self._writing() as conn:
            key = self._find(id_or_name)
            if key.revoked_at is not None:
                raise InvalidRequest(
                    f"Key {key.name} ({key.id}) is revoked: a top-up could never be spent. "
                    "Create a new key instead.",
                    param="key",
                )
            if key.budget_micros is None:
                raise InvalidRequest(
                    f"Key {key.name} has no money budget: set one with --budget first.",
                    param="key",
                )
            if key.budget_micros + micros > MAX_INT:
                raise bad_field("money", "the budget would be too large")
            conn.execute(
                "UPDATE keys SET budget_micros = budget_micros + ? WHERE id = ?", (micros, key.id)
            )
        return self._by_id[key.id]

    def charge(self, key_id: str, tokens: int, cost_micros: int = 0) -> Key:
        """Take ``tokens`` from the balance (it may go below zero), add ``cost_micros`` to the
        spend of the budget's current period, and mark the key used."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise bad_field("tokens", f"must be a whole number of at least 0, got {show(tokens)}")
        now = self._clock()
        known = self._by_id.get(key_id)
        since = timestamp(period_start(known.budget_period if known else None, now))
        with self._lock, self._translated():
            # Only this key changes, so the copy is patched instead of reloaded: this runs
            # once per request. Our own commits do not change our data_version. The spend
            # starts again from 0 when the last charge was in an earlier period.
            with transaction(self._conn) as conn:
                rows = conn.execute(
                    f"UPDATE keys SET balance = balance - ?, last_used_at = ?, "
                    f"spent_micros = CASE WHEN coalesce(budget_since, '') < ? THEN ? "
                    f"ELSE spent_micros + ? END, "
                    f"budget_since = CASE WHEN coalesce(budget_since, '') < ? THEN ? "
                    f"ELSE budget_since END WHERE id = ? RETURNING {_COLUMNS}",
                    (tokens, timestamp(now), since, cost_micros, cost_micros, since, since,
                     key_id),
                ).fetchall()  # fmt: skip
            if not rows:
                raise NotFound(f"No API key with id '{key_id}'.", param="key")
            key = to_key(rows[0])
            self._by_id[key.id] = key
            self._by_prefix[key.prefix] = [
                key if k.id == key.id else k for k in self._by_prefix[key.prefix]
            ]
            return key

    # Internals; every caller holds the lock.

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"The key database is unavailable: {exc}.") from None

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        # IMMEDIATE: the name checks and the writes see the same rows.
        with self._lock, self._translated():
            with transaction(self._conn) as conn:
                yield conn
            self._reload()

    def _reload(self) -> None:
        version = self._data_version()
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY {self._ORDER}").fetchall()
        by_id, by_prefix = index(map(to_key, rows))
        # Swapped whole, so a reader without the lock sees the old or the new copy.
        self._by_id, self._by_prefix, self._version = by_id, by_prefix, version

    def _data_version(self) -> int:
        version: int = self._conn.execute("PRAGMA data_version").fetchone()[0]
        return version

    def _find(self, id_or_name: str) -> Key:
        # A name may be reused once its key is revoked: by name, the key not revoked wins,
        # then the newest.
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM keys WHERE id = ? OR name = ? "
            f"ORDER BY id = ? DESC, revoked_at IS NULL DESC, {self._ORDER} DESC",
            (id_or_name, id_or_name, id_or_name),
        ).fetchone()
        if row is None:
            raise NotFound(f"No API key with id or name '{id_or_name}'.", param="key")
        return to_key(row)

    def _group_of(self, columns: dict[str, object]) -> None:
        """Replace the group's name given by its id; NotFound when there is no such group."""
        name = columns.get("group_id")
        if name is None:
            return
        row = self._conn.execute(
            "SELECT id FROM key_groups WHERE name = ? OR id = ?", (name, name)
        ).fetchone()
        if row is None:
            raise NotFound(
                f"No key group named '{name}' (nobusy keys groups create --name ...).",
                param="group",
            )
        columns["group_id"] = row[0]

    def _check_name_free(self, name: str, own_id: str | None) -> None:
        # Names are unique among keys not revoked (a partial unique index says the same).
        row = self._conn.execute(
            "SELECT id FROM keys WHERE name = ? AND revoked_at IS NULL", (name,)
        ).fetchone()
        if row is not None and row[0] != own_id:
            raise KeyNameTaken(f"A key named '{name}' already exists ({row[0]}).", param="name")


def _algorithm(hasher: Hasher) -> str:
    algorithm = _algorithm_of(hasher(b""))
    if not algorithm:
        raise ValueError("a hasher must return '<algorithm>:<digest>'")
    return algorithm


def _algorithm_of(digest: str) -> str:
    algorithm, colon, _ = digest.partition(":")
    return algorithm if colon else ""


def new_id(conn: Any) -> str:
    while True:  # 40 random bits: a clash is rare, but must not become an error
        key_id = "key_" + secrets.token_hex(5)
        if conn.execute("SELECT 1 FROM keys WHERE id = ?", (key_id,)).fetchone() is None:
            return key_id


def _rebalance(key: Key, quota: int | None) -> int | None:
    """A new quota moves the balance by the same amount; tokens already used stay used."""
    if quota is None:
        return None
    if key.quota_tokens is None or key.balance is None:
        return quota
    return key.balance + quota - key.quota_tokens


def _when(moment: datetime | None) -> str:
    return "?" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")
