"""Key groups (teams): a name and a money budget that the keys in the group spend together.

A key is in at most one group (``keys.group_id``); a request is held and charged against its
key's budget and its group's (``nobusy.store.money_holds``), and the tighter one refuses.
Groups live beside the keys, in the same database (SQLite or PostgreSQL), and are managed
through the key store's connection: ``nobusy keys groups`` and ``/v1/nobusy/groups``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, cast

from nobusy.errors import InvalidRequest, KeyNameTaken, NotFound
from nobusy.keys import MAX_INT, bad_field, check_money, check_period, show
from nobusy.money.budgets import period_start
from nobusy.store.keys import KeyStore
from nobusy.store.sqlite import parse_timestamp, timestamp

__all__ = ["GROUP_FIELDS", "KeyGroup", "KeyGroups"]

GROUP_FIELDS = ("name", "budget", "budget_period")


@dataclass(frozen=True, slots=True)
class KeyGroup:
    """One group as stored: its budget (None: none), spend in the period since
    ``budget_since``, and the money held by its keys' requests in flight."""

    id: str
    name: str
    budget_micros: int | None
    budget_period: str | None
    spent_micros: int
    budget_since: datetime | None
    reserved_micros: int
    created_at: datetime

    def spent(self, now: datetime) -> int:
        """Micro-units spent in the current period (0 after a reset)."""
        if self.budget_since is None or self.budget_since < period_start(self.budget_period, now):
            return 0
        return self.spent_micros


_COLUMNS = ", ".join(f.name for f in fields(KeyGroup))


def _group(row: Sequence[object]) -> KeyGroup:
    values = dict(zip((f.name for f in fields(KeyGroup)), row, strict=True))
    for name in ("budget_since", "created_at"):
        values[name] = parse_timestamp(cast("str | None", values[name]))
    return KeyGroup(**values)  # type: ignore[arg-type]


def _columns(given: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in given.items():
        if name == "name":
            if not isinstance(value, str) or not value.strip() or value != value.strip():
                raise bad_field("name", "must be a non-empty name without surrounding spaces")
            if len(value) > 64 or not value.isprintable() or "/" in value:
                raise bad_field("name", "at most 64 printable characters, no '/'")
            out["name"] = value
        elif name == "budget":
            out["budget_micros"] = check_money("budget", value)
        elif name == "budget_period":
            out["budget_period"] = check_period(value)
        else:
            raise bad_field(name, f"unknown field; the fields are {', '.join(GROUP_FIELDS)}")
    return out


class KeyGroups:
    """The groups in ``keys``'s database, written through its connection and lock."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    def list(self) -> list[KeyGroup]:
        """Every group, by name."""
        with self.keys._lock, self.keys._translated():
            rows = self.keys._conn.execute(f"SELECT {_COLUMNS} FROM key_groups ORDER BY name")
            return [_group(row) for row in rows.fetchall()]

    def get(self, id_or_name: str) -> KeyGroup:
        """One group by id or name; NotFound."""
        with self.keys._lock, self.keys._translated():
            return self._find(self.keys._conn, id_or_name)

    def members(self, group: KeyGroup) -> int:
        """How many keys (revoked ones too) are in ``group``."""
        with self.keys._lock, self.keys._translated():
            row = self.keys._conn.execute(
                "SELECT count(*) FROM keys WHERE group_id = ?", (group.id,)
            ).fetchone()
            return int(row[0])

    def create(
        self, name: str, budget: object = None, budget_period: str | None = None
    ) -> KeyGroup:
        """A new group, with a budget when ``budget`` is given."""
        columns = _columns({"name": name, "budget": budget, "budget_period": budget_period})
        group_id = "grp_" + secrets.token_hex(5)
        columns.update(id=group_id, created_at=timestamp(self.keys._clock()))
        with self.keys._writing() as conn:
            self._name_free(conn, name)
            names, marks = ", ".join(columns), ", ".join("?" * len(columns))
            conn.execute(
                f"INSERT INTO key_groups ({names}) VALUES ({marks})", list(columns.values())
            )
            return self._find(conn, group_id)

    def update(self, id_or_name: str, /, **changes: object) -> KeyGroup:
        """Change the fields given; a None budget removes it."""
        columns = _columns(changes)
        if not columns:
            raise InvalidRequest(f"Nothing to update: give any of {', '.join(GROUP_FIELDS)}.")
        with self.keys._writing() as conn:
            group = self._find(conn, id_or_name)
            if "name" in columns and columns["name"] != group.name:
                self._name_free(conn, cast(str, columns["name"]))
            assignments = ", ".join(f"{name} = ?" for name in columns)
            conn.execute(
                f"UPDATE key_groups SET {assignments} WHERE id = ?", [*columns.values(), group.id]
            )
            return self._find(conn, group.id)

    def delete(self, id_or_name: str) -> KeyGroup:
        """Delete a group; its keys stay, in no group."""
        with self.keys._writing() as conn:
            group = self._find(conn, id_or_name)
            conn.execute("UPDATE keys SET group_id = NULL WHERE group_id = ?", (group.id,))
            conn.execute("DELETE FROM key_groups WHERE id = ?", (group.id,))
            return group

    def topup(self, id_or_name: str, amount: object) -> KeyGroup:
        """Add ``amount`` (in pricing.currency) to the group's money budget."""
        micros = cast(int, check_money("money", amount, positive=True))
        with self.keys._writing() as conn:
            group = self._find(conn, id_or_name)
            if group.budget_micros is None:
                raise InvalidRequest(
                    f"Key group {group.name} has no money budget: set one with --budget first.",
                    param="group",
                )
            if group.budget_micros + micros > MAX_INT:
                raise bad_field("money", "the budget would be too large")
            conn.execute(
                "UPDATE key_groups SET budget_micros = budget_micros + ? WHERE id = ?",
                (micros, group.id),
            )
            return self._find(conn, group.id)

    def _find(self, conn: Any, id_or_name: str) -> KeyGroup:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM key_groups WHERE id = ? OR name = ?",
            (id_or_name, id_or_name),
        ).fetchone()
        if row is None:
            raise NotFound(f"No key group with id or name {show(id_or_name)}.", param="group")
        return _group(row)

    def _name_free(self, conn: Any, name: str) -> None:
        row = conn.execute("SELECT id FROM key_groups WHERE name = ?", (name,)).fetchone()
        if row is not None:
            raise KeyNameTaken(
                f"A key group named '{name}' already exists ({row[0]}).", param="name"
            )
