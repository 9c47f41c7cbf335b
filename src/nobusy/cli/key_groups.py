"""``nobusy keys groups``: key groups (teams) with a money budget their keys spend together."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nobusy.cli.keys import _UNLIMITED, _limit, _store
from nobusy.cli.options import store_options
from nobusy.keys import BUDGET_PERIODS
from nobusy.money.budgets import money
from nobusy.store.key_groups import KeyGroup, KeyGroups

__all__ = ["groups"]

F = TypeVar("F", bound=Callable[..., Any])


def _options(*, create: bool) -> Callable[[F], F]:
    decorators = [
        click.option("--name", required=create, help="A unique name for the group (a team)."),
        click.option(
            "--budget",
            callback=_limit(str),
            metavar="AMOUNT|none",
            help="Money its keys may spend together per period, in pricing.currency.",
        ),
        click.option(
            "--budget-period",
            type=click.Choice(BUDGET_PERIODS),
            help="When the budget starts again, in UTC (daily).",
        ),
        store_options,
    ]

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def _fields(options: dict[str, Any]) -> dict[str, Any]:
    return {
        name: None if value is _UNLIMITED else value
        for name, value in options.items()
        if value is not None
    }


@click.group()
def groups() -> None:
    """Key groups: a money budget shared by the keys in the group (keys create --group)."""


@groups.command()
@_options(create=True)
def create(config_file: Path | None, data_dir: Path | None, **options: Any) -> None:
    """Create a group, with a budget when --budget is given."""
    fields = _fields(options)
    with _store(config_file, data_dir, hints=_hints(fields), create=True) as store:
        group = KeyGroups(store).create(**fields)
    Console().print(f"Created key group {group.id} ({escape(group.name)}): {_budget(group)}.")


@groups.command("list")
@store_options
def list_groups(config_file: Path | None, data_dir: Path | None) -> None:
    """List the groups: budget, spent this period, held by requests in flight, keys."""
    with _store(config_file, data_dir) as store:
        found = KeyGroups(store)
        rows = [(group, found.members(group)) for group in found.list()]
    table = Table(title="Key groups")
    for column in ("id", "name", "budget (spent / budget)", "held", "keys"):
        table.add_column(column, no_wrap=column == "id")
    for group, members in rows:
        held = money(group.reserved_micros)
        table.add_row(group.id, escape(group.name), _budget(group), held, str(members))
    Console().print(table)


@groups.command()
@click.argument("group")
@_options(create=False)
def update(group: str, config_file: Path | None, data_dir: Path | None, **options: Any) -> None:
    """Change a group's name or budget; `--budget none` removes the budget."""
    fields = _fields(options)
    if not fields:
        raise click.UsageError("Nothing to update: give at least one option (see --help).")
    with _store(config_file, data_dir, hints=_hints(fields)) as store:
        updated = KeyGroups(store).update(group, **fields)
    Console().print(f"{updated.id} ({escape(updated.name)}): {_budget(updated)}.")


@groups.command()
@click.argument("group")
@store_options
def delete(group: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Delete a group; its keys stay, in no group."""
    with _store(config_file, data_dir) as store:
        deleted = KeyGroups(store).delete(group)
    Console().print(f"Deleted key group {deleted.id} ({escape(deleted.name)}).")


@groups.command()
@click.argument("group")
@click.option("--money", "amount", required=True, metavar="AMOUNT", help="Add to its budget.")
@store_options
def topup(group: str, amount: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Add --money AMOUNT (pricing.currency) to a group's budget."""
    with _store(config_file, data_dir, hints={"money": "'--money'"}) as store:
        topped = KeyGroups(store).topup(group, amount)
    Console().print(f"{topped.id} ({escape(topped.name)}): budget {_budget(topped)}.")


def _hints(fields: dict[str, Any]) -> dict[str, str]:
    return {name: f"'--{name.replace('_', '-')}'" for name in fields}


def _budget(group: KeyGroup) -> str:
    if group.budget_micros is None:
        return "no budget"
    used = group.spent(datetime.now(UTC))
    return f"{money(used)} / {money(group.budget_micros)} {group.budget_period or 'daily'}"
