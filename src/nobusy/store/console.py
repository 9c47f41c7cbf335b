"""The console's reads of the usage log: daily series, the request log's pages, CSV rows.

The series come from ``usage_daily`` (a row per day, key, alias and upstream, kept by a
trigger: ``store.migrations.m012_console``), so 30 days of 100 keys is a few thousand rows
whatever the traffic. The request log is read in keyset pages, newest first by
``(time, id)``: each page is an index range from the last row of the one before, so page
10,000 costs what page 1 does and nothing counts or skips the rows in between. Portable SQL
with ``?`` placeholders: SQLite, or PostgreSQL through ``Qmark``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import orjson

from nobusy.errors import InvalidRequest

__all__ = [
    "CSV_COLUMNS",
    "SERIES_GROUPS",
    "Filters",
    "csv_rows",
    "decode_cursor",
    "request_page",
    "request_row",
    "series",
]

SERIES_GROUPS = {"key": "key_id", "model": "alias", "upstream": "upstream"}
_METRICS = ("requests", "tokens", "spend_micros", "errors", "failovers")

_ROW_COLUMNS = (
    "usage.id, time, request_id, key_id, keys.name, alias, upstream, tried, outcome, stream, "
    "ttft_ms, queue_ms, duration_ms, prompt_tokens, completion_tokens, cached_tokens, "
    "usage_source, report_currency, report_cost_micros, first_choice, first_choice_cost_micros, "
    "overflow, notes, cache"
)
_ROW_NAMES = [c.strip().split(".")[-1] for c in _ROW_COLUMNS.split(",")]
_ROW_NAMES[4] = "key_name"
CSV_COLUMNS = [n for n in _ROW_NAMES if n != "id"]


def _days(start: date, end: date) -> list[str]:
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def series(conn: Any, start: date, end: date, by: str) -> dict[str, Any]:
    """Per day from ``start`` to ``end`` (inclusive) and per group ``by``: requests, tokens,
    spend (micro-units of the reporting currency), errors and failovers; each group's
    totals, what failovers added to its spend, and the last time it was used."""
    column = SERIES_GROUPS[by]
    days = _days(start, end)
    index = {day: i for i, day in enumerate(days)}
    rows = conn.execute(
        f"SELECT day, {column}, CAST(SUM(requests) AS BIGINT), "
        "CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT), "
        "CAST(SUM(cost_micros) AS BIGINT), CAST(SUM(errors) AS BIGINT), "
        "CAST(SUM(failovers) AS BIGINT), CAST(SUM(first_choice_cost_micros) AS BIGINT), "
        f"MAX(last_time) FROM usage_daily WHERE day >= ? AND day <= ? GROUP BY day, {column}",
        [days[0], days[-1]],
    )
    groups: dict[str, dict[str, Any]] = {}
    for day, name, *values, first_choice, last in rows:
        group = groups.get(name)
        if group is None:
            group = groups[name] = {
                "id": name or None,
                "label": name or "(none)",
                **{m: [0] * len(days) for m in _METRICS},
                "first_choice_micros": 0,
                "last_used": None,
            }
        for metric, value in zip(_METRICS, values, strict=True):
            group[metric][index[day]] = int(value)
        group["first_choice_micros"] += int(first_choice)
        group["last_used"] = max(group["last_used"] or "", last)
    if by == "key":
        names = dict(conn.execute("SELECT id, name FROM keys").fetchall())
        for group in groups.values():
            group["label"] = names.get(group["id"], group["id"] or "(no key)")
    out = []
    for group in groups.values():
        totals = {m: sum(group[m]) for m in _METRICS}
        group["totals"] = totals
        group["failover_extra_micros"] = totals["spend_micros"] - group.pop("first_choice_micros")
        out.append(group)
    out.sort(key=lambda g: (-g["totals"]["spend_micros"], -g["totals"]["requests"], g["label"]))
    return {"days": days, "by": by, "groups": out}


@dataclass(frozen=True, slots=True)
class Filters:
    """What the request log shows: a key, an alias, a status, a time range (UTC text)."""

    key_id: str | None = None
    alias: str | None = None
    status: str | None = None  # ok, error (neither ok nor client_gone), or an outcome code
    since: str | None = None
    until: str | None = None

    def where(self) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.key_id:
            clauses.append("key_id = ?")
            params.append(self.key_id)
        if self.alias:
            clauses.append("alias = ?")
            params.append(self.alias)
        if self.status == "error":
            clauses.append("outcome NOT IN ('ok', 'client_gone')")
        elif self.status:
            clauses.append("outcome = ?")
            params.append(self.status)
        if self.since:
            clauses.append("time >= ?")
            params.append(self.since)
        if self.until:
            clauses.append("time < ?")
            params.append(self.until)
        return clauses, params


def decode_cursor(text: str) -> tuple[str, int]:
    """The ``(time, id)`` a page continues after, from its opaque form; 400 if malformed."""
    try:
        when, row_id = orjson.loads(base64.urlsafe_b64decode(text.encode()))
        if isinstance(when, str) and isinstance(row_id, int):
            return when, row_id
    except (ValueError, TypeError, orjson.JSONDecodeError):
        pass
    raise InvalidRequest("cursor: not a cursor this endpoint gave", param="cursor")


def _cursor(when: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([when, row_id])).decode()


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(_ROW_NAMES, row, strict=True))
    record["tried"] = orjson.loads(record["tried"] or "[]")
    record["notes"] = orjson.loads(record["notes"] or "[]")
    record["stream"] = bool(record["stream"])
    record["overflow"] = bool(record["overflow"])
    return record


def request_page(
    conn: Any, filters: Filters, limit: int, after: tuple[str, int] | None
) -> dict[str, Any]:
    """Up to ``limit`` rows, newest first, after the row ``after`` names; the next cursor."""
    clauses, params = filters.where()
    if after is not None:
        # A row value: SQLite and PostgreSQL both read it as a range of the (time, id) order.
        clauses.append("(time, usage.id) < (?, ?)")
        params.extend(after)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT {_ROW_COLUMNS} FROM usage LEFT JOIN keys ON keys.id = usage.key_id {where} "
        "ORDER BY time DESC, usage.id DESC LIMIT ?",
        [*params, limit + 1],
    ).fetchall()
    more = len(rows) > limit
    data = [_record(row) for row in rows[:limit]]
    last = data[-1] if data else None
    return {
        "data": data,
        "next_cursor": _cursor(last["time"], last["id"]) if more and last else None,
    }


def request_row(conn: Any, row_id: int) -> dict[str, Any] | None:
    """One row of the log by its id, or None."""
    row = conn.execute(
        f"SELECT {_ROW_COLUMNS} FROM usage LEFT JOIN keys ON keys.id = usage.key_id "
        "WHERE usage.id = ?",
        [row_id],
    ).fetchone()
    return None if row is None else _record(row)


def csv_rows(conn: Any, filters: Filters, batch: int = 2000) -> Iterator[list[Any]]:
    """Every row the filters select, oldest first, in batches read by keyset: a CSV export
    of a million rows holds one batch in memory at a time."""
    clauses, params = filters.where()
    after: tuple[str, int] | None = None
    while True:
        keyset = ["(time, usage.id) > (?, ?)"] if after else []
        where = " AND ".join([*clauses, *keyset])
        rows = conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM usage LEFT JOIN keys ON keys.id = usage.key_id "
            f"{'WHERE ' + where if where else ''} ORDER BY time, usage.id LIMIT ?",
            [*params, *(after or ()), batch],
        ).fetchall()
        for row in rows:
            yield list(row[1:])
        if len(rows) < batch:
            return
        after = (rows[-1][1], rows[-1][0])
