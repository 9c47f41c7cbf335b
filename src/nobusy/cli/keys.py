"""``nobusy keys``: create, list, show, update, revoke and top up API keys in the database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nobusy.cli.options import (
    config_option,
    data_dir_option,
    existing_store,
    settings_for,
    store_options,
    where,
)
from nobusy.edge.auth import hashers_for
from nobusy.errors import InvalidRequest, NobusyError
from nobusy.keys import BUDGET_PERIODS, PRIORITIES, Key, validate
from nobusy.money.budgets import money, spent
from nobusy.store.backends import open_keys, open_knowledge
from nobusy.store.key_groups import KeyGroups
from nobusy.store.keys import KeyStore
from nobusy.store.migrations import DB_NAME

__all__ = ["keys"]

F = TypeVar("F", bound=Callable[..., Any])
NO_LIMIT = "none"  # the word that removes a limit in `update`
_UNLIMITED = object()  # what the option callbacks turn that word into
STATUS_STYLE = {"active": "green", "revoked": "red", "expired": "yellow"}


def _limit(
    kind: type[int] | type[float] | type[str],
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback: a whole number (or seconds), or ``none`` for no limit."""

    what = "whole number" if kind is int else "number"

    def convert(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if not isinstance(value, str) or value.strip().lower() in (NO_LIMIT, "unlimited"):
            return None if value is None else _UNLIMITED
        try:
            return kind(value)
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is not a {what} (or '{NO_LIMIT}' for no limit)", ctx, param
            ) from None

    return convert


def _options(*, create: bool) -> Callable[[F], F]:
    """The options ``create`` and ``update`` share; ``none`` removes a limit in ``update``."""
    count: dict[str, Any] = {"callback": _limit(int), "metavar": "N|none"}
    seconds: dict[str, Any] = {"callback": _limit(float), "metavar": "SECONDS|none"}
    decorators = [
        click.option("--name", required=create, help="A unique name for people to know it by."),
        click.option("--priority", type=click.Choice(PRIORITIES), help="Priority (normal)."),
        click.option("--rpm", **count, help="Requests per minute at most."),
        click.option("--tpm", **count, help="Tokens per minute at most."),
        click.option("--max-concurrency", **count, help="Requests in flight at most."),
        click.option("--quota-tokens", **count, help="Prepaid tokens (unlimited if unset)."),
        click.option("--models", metavar="A,B|all", help="Model aliases it may use (all)."),
        click.option("--expires", metavar="30d|12h|90m|never", help="Expire after this long."),
        click.option("--max-wait", **seconds, help="Seconds a request may queue (default)."),
        click.option(
            "--budget",
            callback=_limit(str),
            metavar="AMOUNT|none",
            help="Money it may spend per period, in pricing.currency (unlimited if unset).",
        ),
        click.option(
            "--budget-period",
            type=click.Choice(BUDGET_PERIODS),
            help="When the budget starts again, in UTC (daily).",
        ),
        click.option(
            "--group",
            callback=_limit(str),
            metavar="NAME|none",
            help="The key group whose budget it also spends (nobusy keys groups).",
        ),
        config_option,
        data_dir_option,
    ]

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


stores_option = click.option(
    "--stores",
    metavar="VS_A,VS_B|none",
    help="Vector stores it may read and search besides its own (none: only its own).",
)


def _grant(
    config_file: Path | None, data_dir: Path | None, key_id: str, stores: str | None
) -> list[str]:
    """Grant ``stores`` (``none``: none) to the key when given; the stores granted now."""
    settings, _ = existing_store(config_file, data_dir)
    records = open_knowledge(settings)
    try:
        if stores is not None:
            wanted = [] if stores.strip() == NO_LIMIT else [s.strip() for s in stores.split(",")]
            missing = records.missing_stores([s for s in wanted if s])
            if missing:
                raise click.BadParameter(
                    f"no vector store {', '.join(missing)}", param_hint="'--stores'"
                )
            records.grant(key_id, [s for s in wanted if s])
        return records.grants(key_id)
    finally:
        records.close()


def _fields(options: dict[str, Any]) -> dict[str, Any]:
    """The options given, as ``KeyStore`` fields: ``none``/``all``/``never`` become None."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name == "models":
            value = None if value.strip() == "all" else [m.strip() for m in value.split(",")]
        elif name == "expires" and value.strip() == "never":
            value = None
        out[name] = None if value is _UNLIMITED else value
    return out


@contextmanager
def _store(
    config_file: Path | None,
    data_dir: Path | None,
    fields: dict[str, Any] | None = None,
    hints: dict[str, str] | None = None,
    *,
    create: bool = False,
) -> Iterator[KeyStore]:
    """The server's store, opened only once ``fields`` are valid; nobusy errors as click errors.

    An error about a field names its option (exit 2); ``hints`` names arguments instead.
    Only ``create`` makes a new database, and it says where.
    """
    options = {name: f"'--{name.replace('_', '-')}'" for name in fields or {}} | (hints or {})
    if create:
        settings = settings_for(config_file, data_dir=data_dir)
    else:
        settings, _ = existing_store(config_file, data_dir)
    try:
        if fields is not None:
            validate(fields)
        new = settings.store is None and not (settings.data_dir / DB_NAME).is_file()
        # The same hashers as the server's: its `crypto` setting.
        store = open_keys(settings, hashers_for(settings.crypto))
        if new:
            Console(stderr=True).print(
                f"Created a new key database {escape(str((settings.data_dir / DB_NAME).resolve()))}"
                f" (data dir from {escape(where(settings, config_file, data_dir))}): start "
                "`nobusy serve` with this data dir for it to accept these keys."
            )
        try:
            yield store
        finally:
            store.close()
    except InvalidRequest as exc:
        if exc.param not in options:  # not about a value given (e.g. the key has no quota)
            raise click.ClickException(exc.message) from None
        message = exc.message.removeprefix(f"{exc.param}: ")
        raise click.BadParameter(message, param_hint=options[exc.param]) from None
    except NobusyError as exc:
        raise click.ClickException(exc.message) from None


@click.group()
def keys() -> None:
    """Manage API keys: once any key exists, every request needs one."""


@keys.command()
@_options(create=True)
def create(config_file: Path | None, data_dir: Path | None, **options: Any) -> None:
    """Create a key and print it once; only its hash is stored."""
    fields = _fields(options)
    with _store(config_file, data_dir, fields, create=True) as store:
        key, secret = store.create(**fields)
    err = Console(stderr=True)
    err.print(f"Created key [bold]{key.id}[/] ({escape(key.name)}).")
    err.print("[yellow]Copy it now: it is not stored and will not be shown again.[/]")
    click.echo(secret)


@keys.command("list")
@store_options
def list_keys(config_file: Path | None, data_dir: Path | None) -> None:
    """List the keys: limits, balance, models, group and status."""
    with _store(config_file, data_dir) as store:
        found = store.list()
        groups = {g.id: g.name for g in KeyGroups(store).list()}
    now = datetime.now(UTC)
    table = Table(title="API keys")
    columns = ["id", "name", "prefix", "priority", "limits", "balance / quota", "models", "group"]
    for column in [*columns, "status", "last used"]:
        # The id is what people copy into the next command: never shortened.
        table.add_column(
            column,
            justify="right" if column.startswith("balance") else "left",
            no_wrap=column == "id",
            min_width=14 if column == "id" else None,
        )
    for key in found:
        table.add_row(
            key.id,
            escape(key.name),
            f"nb-{key.prefix}…",
            key.priority,
            _limits(key),
            _balance(key),
            _models(key),
            escape(groups.get(key.group_id, key.group_id)) if key.group_id else "",
            _status(key, now),
            _time(key.last_used_at, "never"),
        )
    Console().print(table)


@keys.command()
@click.argument("key")
@store_options
def show(key: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Show one key, by id or name."""
    with _store(config_file, data_dir) as store:
        found = store.get(key)
        group = _group_name(store, found)
    _print(found, _grant(config_file, data_dir, found.id, None), group)


@keys.command()
@click.argument("key")
@_options(create=False)
@stores_option
def update(key: str, config_file: Path | None, data_dir: Path | None, **options: Any) -> None:
    """Change a key's name, limits or granted vector stores; `none` removes a limit,
    --expires counts from now."""
    stores = options.pop("stores")
    fields = _fields(options)
    if not fields and stores is None:
        raise click.UsageError("Nothing to update: give at least one option (see --help).")
    with _store(config_file, data_dir, fields) as store:
        updated = store.update(key, **fields) if fields else store.get(key)
        group = _group_name(store, updated)
    _print(updated, _grant(config_file, data_dir, updated.id, stores), group)


@keys.command()
@click.argument("key")
@store_options
def revoke(key: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Revoke a key for good: a running server refuses it within a second."""
    with _store(config_file, data_dir) as store:
        revoked = store.revoke(key)
        active = store.active_count()
    when = _time(revoked.revoked_at)
    Console().print(f"Revoked {revoked.id} ({escape(revoked.name)}) at {when}.")
    if active == 0:
        # Keys exist, so every request needs one, and none is left: the service is locked.
        Console(stderr=True).print(
            "[yellow]That was the last active key: every request to the service is now "
            "refused.[/] To get back in, create one: `nobusy keys create --name NAME` "
            "(with the same --config / --data-dir)."
        )


@keys.command()
@click.argument("key")
@click.argument("tokens", type=int, required=False)
@click.option("--money", metavar="AMOUNT", help="Add AMOUNT (pricing.currency) to its budget.")
@store_options
def topup(
    key: str, tokens: int | None, money: str | None, config_file: Path | None,
    data_dir: Path | None,
) -> None:  # fmt: skip
    """Add TOKENS to a key's balance and quota, or --money to its money budget."""
    if (tokens is None) == (money is None):
        raise click.UsageError("Give either TOKENS or --money AMOUNT.")
    hints = {"tokens": "'TOKENS'", "money": "'--money'"}
    with _store(config_file, data_dir, hints=hints) as store:
        if money is not None:
            topped = store.topup_money(key, money)
            Console().print(f"{topped.id} ({escape(topped.name)}): budget {_budget(topped)}.")
            return
        assert tokens is not None
        topped = store.topup(key, tokens)
    Console().print(f"{topped.id} ({escape(topped.name)}): {_balance(topped)} tokens.")


def _print(key: Key, stores: list[str] | None = None, group: str | None = None) -> None:
    table = Table(show_header=False, title=f"API key {key.id}")
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "name": escape(key.name),
        "prefix": f"nb-{key.prefix}…",
        "hash": key.hash.partition(":")[0],
        "priority": key.priority,
        "rpm": _number(key.rpm),
        "tpm": _number(key.tpm),
        "max concurrency": _number(key.max_concurrency),
        "balance / quota": _balance(key),
        "budget": _budget(key),
        "group": escape(group) if group else "none",
        "models": _models(key),
        "max wait": "default" if key.max_wait is None else f"{key.max_wait:g}s",
        "status": _status(key, datetime.now(UTC)),
        "created": _time(key.created_at),
        "expires": _time(key.expires_at, "never"),
        "revoked": _time(key.revoked_at, "no"),
        "last used": _time(key.last_used_at, "never"),
    }
    if stores is not None:
        rows["vector stores"] = escape(", ".join(stores)) or "its own"
    for name, value in rows.items():
        table.add_row(name, value)
    Console().print(table)


def _group_name(store: KeyStore, key: Key) -> str | None:
    """The name of the key's group (its id if the group is gone meanwhile)."""
    if key.group_id is None:
        return None
    names = {g.id: g.name for g in KeyGroups(store).list()}
    return names.get(key.group_id, key.group_id)


def _number(value: int | None) -> str:
    return "unlimited" if value is None else f"{value:,}"


def _limits(key: Key) -> str:
    parts = [
        f"{label} {value:,}"
        for label, value in (("rpm", key.rpm), ("tpm", key.tpm), ("conc", key.max_concurrency))
        if value is not None
    ]
    if key.max_wait is not None:
        parts.append(f"wait {key.max_wait:g}s")
    return ", ".join(parts) or "none"


def _budget(key: Key) -> str:
    """Spent of budget this period, or ``unlimited``."""
    if key.budget_micros is None:
        return "unlimited"
    used = spent(key, datetime.now(UTC))
    return f"{money(used)} / {money(key.budget_micros)} {key.budget_period or 'daily'}"


def _balance(key: Key) -> str:
    if key.quota_tokens is None or key.balance is None:
        return "unlimited"
    balance = f"[red]{key.balance:,}[/]" if key.balance <= 0 else f"{key.balance:,}"
    return f"{balance} / {key.quota_tokens:,}"


def _models(key: Key) -> str:
    return "all" if key.models is None else escape(", ".join(key.models))


def _status(key: Key, now: datetime) -> str:
    status = key.status(now)
    text = f"[{STATUS_STYLE[status]}]{status}[/]"
    if status == "active" and key.expires_at is not None:
        text += f" (until {key.expires_at:%Y-%m-%d})"
    return text


def _time(moment: datetime | None, missing: str = "") -> str:
    return missing if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")
