"""``/v1/nobusy/usage/series`` and ``/v1/nobusy/usage/export.csv``: the console's usage page.

``series?from=YYYY-MM-DD&to=YYYY-MM-DD&by=key|model|upstream`` (the last 30 days by default):
per day and group, requests, tokens, spend, errors and failovers, read from the daily rollup
(``store.console.series``). ``export.csv`` streams the request rows of the same range (and
the request log's filters) as CSV, read in keyset batches on a worker thread, so an export
of a million rows never sits in memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from nobusy.errors import InvalidRequest
from nobusy.responses import JSONResponse
from nobusy.settings import Settings
from nobusy.state import app_state
from nobusy.store.backends import reading
from nobusy.store.console import CSV_COLUMNS, SERIES_GROUPS, Filters, csv_rows, series

__all__ = ["date_range", "routes"]

MAX_DAYS = 366


def _day(request: Request, name: str, default: date) -> date:
    text = request.query_params.get(name)
    if not text:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"{name}: a date YYYY-MM-DD is required, got {text!r}", param=name
        ) from None


def date_range(request: Request) -> tuple[date, date]:
    """``from`` and ``to`` (inclusive; the last 30 days by default), checked."""
    today = datetime.now(UTC).date()
    end = _day(request, "to", today)
    start = _day(request, "from", end - timedelta(days=29))
    if start > end:
        raise InvalidRequest("from: must not be after to", param="from")
    if (end - start).days >= MAX_DAYS:
        raise InvalidRequest(f"from: the range is at most {MAX_DAYS} days", param="from")
    return start, end


async def usage_series(request: Request) -> Response:
    """Daily series per key, model or upstream over a date range, with spend."""
    by = request.query_params.get("by", "key")
    if by not in SERIES_GROUPS:
        raise InvalidRequest(
            f"by: must be one of {', '.join(SERIES_GROUPS)}, got {by!r}", param="by"
        )
    start, end = date_range(request)
    settings = app_state(request).settings
    data = await run_in_threadpool(_read_series, settings, start, end, by)
    return JSONResponse({**data, "currency": settings.pricing.currency})


def _read_series(settings: Settings, start: date, end: date, by: str) -> dict[str, Any]:
    with reading(settings) as conn:
        return series(conn, start, end, by)


async def usage_export(request: Request) -> Response:
    """The request rows of the range (and filters) as CSV, oldest first, streamed."""
    start, end = date_range(request)
    params = request.query_params
    filters = Filters(
        key_id=params.get("key") or None,
        alias=params.get("model") or None,
        status=params.get("status") or None,
        since=f"{start.isoformat()} 00:00:00",
        until=f"{(end + timedelta(days=1)).isoformat()} 00:00:00",
    )
    name = f"nobusy-usage-{start.isoformat()}-{end.isoformat()}.csv"
    return StreamingResponse(
        _csv(app_state(request).settings, filters),  # a sync iterator: run on a thread
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


def _cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (=, +, -, @) is quoted with ``'``:
    key names and aliases are the operator's, but request ids and notes come from clients."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def _csv(settings: Settings, filters: Filters) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    with reading(settings) as conn:
        for row in csv_rows(conn, filters):
            writer.writerow([_cell(value) for value in row])
            if out.tell() > 65_536:
                yield out.getvalue()
                out.seek(0)
                out.truncate()
    yield out.getvalue()


# Relative to the admin mount.
routes: list[BaseRoute] = [
    Route("/usage/series", usage_series, methods=["GET"]),
    Route("/usage/export.csv", usage_export, methods=["GET"]),
]
