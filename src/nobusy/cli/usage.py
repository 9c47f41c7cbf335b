"""``nobusy usage``: requests, outcomes, tokens and latency from the usage log, grouped."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nobusy import errors
from nobusy.cli.audit import parse_since
from nobusy.cli.options import existing_store, store_options
from nobusy.db import DB_NAME, open_db, timestamp
from nobusy.errors import NobusyError

__all__ = ["Group", "percentile", "summarize", "usage"]

# What a group is, as SQL over `usage`; NULL becomes the label in brackets.
GROUPS = {"key": "key_id", "model": "alias", "upstream": "upstream"}
NONE_LABEL = {"key": "(no key)", "model": "(none)", "upstream": "(none)"}
# Outcomes are error codes (or ok / client_gone): a code nobusy answers with a 4xx means the
# request was refused (limits, quota, a bad request); any other code means it failed.
_CLIENT_CODES = {
    cls.code
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, NobusyError) and cls.status_code < 500
}


@dataclass
class Group:
    """One row of the report."""

    label: str
    requests: int = 0
    answered: int = 0
    rejected: int = 0
    failed: int = 0
    left: int = 0  # the client went away before the end of the answer
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_ms_total: float = 0.0
    ttfts: list[float] = field(default_factory=list)  # sorted

    @property
    def mean_queue_ms(self) -> float:
        return self.queue_ms_total / self.requests if self.requests else 0.0


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile (``0 < p <= 1``) of an ascending list: a value that occurred."""
    if not ordered:
        return None
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


def summarize(conn: sqlite3.Connection, by: str, since: datetime | None) -> list[Group]:
    """The usage rows since ``since`` (all if None) grouped ``by`` key, model or upstream."""
    column = GROUPS[by]
    where, params = ("WHERE time >= ?", [timestamp(since)]) if since is not None else ("", [])
    groups: dict[str | None, Group] = {}
    counts = conn.execute(
        f"SELECT {column}, outcome, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
        f"TOTAL(queue_ms) FROM usage {where} GROUP BY {column}, outcome",
        params,
    )
    for name, outcome, n, prompt, completion, queue_ms in counts:
        group = groups.setdefault(name, Group(name or NONE_LABEL[by]))
        group.requests += n
        group.prompt_tokens += prompt
        group.completion_tokens += completion
        group.queue_ms_total += queue_ms
        if outcome == "ok":
            group.answered += n
        elif outcome == "client_gone":
            group.left += n
        elif outcome in _CLIENT_CODES:
            group.rejected += n
        else:
            group.failed += n
    ttft_where = f"{where} AND ttft_ms IS NOT NULL" if where else "WHERE ttft_ms IS NOT NULL"
    ttfts = conn.execute(
        f"SELECT {column}, ttft_ms FROM usage {ttft_where} ORDER BY ttft_ms", params
    )
    for name, ttft_ms in ttfts:
        groups[name].ttfts.append(ttft_ms)
    if by == "key":
        names = dict(conn.execute("SELECT id, name FROM keys").fetchall())
        for key_id, group in groups.items():
            if key_id in names:
                group.label = f"{names[key_id]} ({key_id})"
    return sorted(groups.values(), key=lambda g: (-g.requests, g.label))


@click.command()
@click.option(
    "--by",
    type=click.Choice(list(GROUPS)),
    default="key",
    show_default=True,
    help="Group requests by API key, model alias or the upstream that answered.",
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
    _, data_dir = existing_store(config_file, data_dir)
    try:
        db = open_db(data_dir)
    except NobusyError as exc:
        raise click.ClickException(exc.message) from None
    try:
        groups = summarize(db.conn, by, start)
    finally:
        db.close()
    window = f"since {start:%Y-%m-%d %H:%M} UTC" if start is not None else "all time"
    if not groups:
        Console().print(f"No requests logged in {data_dir / DB_NAME}, {window}.")
        return
    Console().print(_table(groups, f"Usage by {by}, {window}"))


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


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"
