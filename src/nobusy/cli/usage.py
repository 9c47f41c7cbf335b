"""``nobusy usage``: requests, outcomes, tokens, latency and spend from the usage log,
grouped."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nobusy.cli.audit import parse_since
from nobusy.cli.options import existing_store, store_options
from nobusy.errors import NobusyError
from nobusy.money.budgets import money
from nobusy.store.backends import describe, reading
from nobusy.store.usage import GROUPS, Group, summarize

__all__ = ["percentile", "spend_table", "usage"]


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile (``0 < p <= 1``) of an ascending list: a value that occurred."""
    if not ordered:
        return None
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


@click.command()
@click.option(
    "--by",
    type=click.Choice(list(GROUPS)),
    default="key",
    show_default=True,
    help="Group requests by API key, model alias, the upstream that answered, or UTC day.",
)
@click.option(
    "--since",
    metavar="1d|12h|2026-11-01",
    help="Only requests started since then: a duration ago or an ISO date (local time).",
)
@store_options
def usage(by: str, since: str | None, config_file: Path | None, data_dir: Path | None) -> None:
    """Requests, outcomes, tokens, time to first token and queue wait, grouped."""
    start = parse_since(since) if since is not None else None
    settings, _ = existing_store(config_file, data_dir)
    try:
        with reading(settings) as conn:
            groups = summarize(conn, by, start)
    except NobusyError as exc:
        raise click.ClickException(exc.message) from None
    window = f"since {start:%Y-%m-%d %H:%M} UTC" if start is not None else "all time"
    if not groups:
        Console().print(f"No requests logged in {escape(describe(settings))}, {window}.")
        return
    Console().print(_table(groups, f"Usage by {by}, {window}"))
    Console().print(spend_table(groups, f"Spend by {by}, {window}", settings.pricing.currency))


def _table(groups: Iterable[Group], title: str) -> Table:
    caption = "TTFT: time to first token; left: the client went away before the end."
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, collapse_padding=True)
    table.add_column("group", no_wrap=True)
    # Two-line headers keep the table within 100-120 columns.
    numbers = ["requests", "answered", "rejected /\nfailed", "left", "prompt\ntokens",
               "completion\ntokens", "TTFT p50\n(ms)", "TTFT p95\n(ms)",
               "mean queue\n(ms)"]  # fmt: skip
    for column in numbers:
        table.add_column(column, justify="right")
    for g in groups:
        table.add_row(
            escape(g.label),
            f"{g.requests:,}",
            f"{g.answered:,}",
            f"{g.rejected:,} / {g.failed:,}",
            f"{g.left:,}",
            f"{g.prompt_tokens:,}",
            f"{g.completion_tokens:,}",
            _ms(percentile(g.ttfts, 0.50)),
            _ms(percentile(g.ttfts, 0.95)),
            _ms(g.mean_queue_ms),
        )
    return table


def spend_table(groups: Iterable[Group], title: str, currency: str) -> Table:
    """What each group cost, and what failover and overflow added to the first choice's."""
    caption = (
        f"In {currency} (pricing.currency); first choice: the same tokens on each alias's "
        "first route; counted: rows whose upstream reported no usage (nobusy's count)."
    )
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, collapse_padding=True)
    table.add_column("group", no_wrap=True)
    for column in ("requests", "cached\ntokens", "spend", "on first\nchoice",
                   "failover /\noverflow", "counted"):  # fmt: skip
        table.add_column(column, justify="right")
    total = Group("total")
    for g in groups:
        _add_spend(table, g)
        for name in ("requests", "cached_tokens", "cost_micros", "first_choice_cost_micros",
                     "counted"):  # fmt: skip
            setattr(total, name, getattr(total, name) + getattr(g, name))
    table.add_section()
    _add_spend(table, total)
    return table


def _add_spend(table: Table, g: Group) -> None:
    table.add_row(
        escape(g.label),
        f"{g.requests:,}",
        f"{g.cached_tokens:,}",
        money(g.cost_micros, 4),
        money(g.first_choice_cost_micros, 4),
        money(g.cost_micros - g.first_choice_cost_micros, 4),
        f"{g.counted:,}",
    )


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"
