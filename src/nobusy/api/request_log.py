"""``/v1/nobusy/requests``: the request log for the console, newest first, in keyset pages.

``GET /v1/nobusy/requests?key=&model=&status=ok|error|CODE&since=&until=&limit=&cursor=``:
each row's key, alias, route taken (upstreams tried, continuation notes, overflow), outcome,
time to first token, duration, tokens and cost, with its guard and PII events from the audit
log; ``next_cursor`` continues after the last row. ``GET /v1/nobusy/requests/{id}``: one row
and its audit events; their text only where the audit log keeps it (``audit.store: full``)
and ``console.show_content`` lets the admin see it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.errors import InvalidRequest, NotFound
from nobusy.responses import JSONResponse
from nobusy.settings import Settings
from nobusy.state import AppState, app_state
from nobusy.store.backends import reading
from nobusy.store.console import Filters, decode_cursor, request_page, request_row
from nobusy.store.sqlite import parse_timestamp, timestamp

__all__ = ["routes"]

MAX_LIMIT = 200
# Audit rows are written when a request ends: look this far past its end for them.
_AUDIT_SLACK = timedelta(minutes=2)


def _moment(request: Request, name: str) -> str | None:
    text = request.query_params.get(name)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"{name}: a date or time (YYYY-MM-DD[THH:MM]) is required, got {text!r}", param=name
        ) from None
    return timestamp(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", "50")
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidRequest(f"limit: a whole number 1 to {MAX_LIMIT}, got {text!r}", param="limit")
    return int(text)


async def list_requests(request: Request) -> Response:
    """One page of the request log under the filters."""
    params = request.query_params
    filters = Filters(
        key_id=params.get("key") or None,
        alias=params.get("model") or None,
        status=params.get("status") or None,
        since=_moment(request, "since"),
        until=_moment(request, "until"),
    )
    cursor = params.get("cursor")
    after = decode_cursor(cursor) if cursor else None
    state = app_state(request)
    page = await run_in_threadpool(_page, state, filters, _limit(request), after)
    return JSONResponse({"object": "list", "currency": state.settings.pricing.currency, **page})


def _page(
    state: AppState, filters: Filters, limit: int, after: tuple[str, int] | None
) -> dict[str, Any]:
    with reading(state.settings) as conn:
        page = request_page(conn, filters, limit, after)
    rows = page["data"]
    hits: dict[str, dict[str, int]] = {}
    if rows and state.audit is not None:
        oldest = parse_timestamp(rows[-1]["time"])
        newest = parse_timestamp(rows[0]["time"])
        assert oldest is not None and newest is not None
        longest = max((r["duration_ms"] or 0) for r in rows) / 1000
        hits = state.audit.hits(oldest, newest + timedelta(seconds=longest) + _AUDIT_SLACK)
    for row in rows:
        row["hits"] = hits.get(row["request_id"], {})
    return page


async def get_request(request: Request) -> Response:
    """One request of the log with its audit events."""
    text = request.path_params["id"]
    # isdigit alone takes '³'; a row id past SQLite's 64 bits cannot be one either.
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise NotFound(f"No request {text!r} in the log.", param="id")
    state = app_state(request)
    detail = await run_in_threadpool(_detail, state, int(text))
    if detail is None:
        raise NotFound(f"No request {text!r} in the log.", param="id")
    return JSONResponse(detail)


def _detail(state: AppState, row_id: int) -> dict[str, Any] | None:
    with reading(state.settings) as conn:
        row = request_row(conn, row_id)
    if row is None:
        return None
    settings: Settings = state.settings
    content = settings.console.show_content and settings.audit.store == "full"
    events: list[dict[str, Any]] = []
    if state.audit is not None:
        started = parse_timestamp(row["time"])
        assert started is not None
        until = started + timedelta(seconds=(row["duration_ms"] or 0) / 1000) + _AUDIT_SLACK
        events = [
            {k: e[k] for k in ("id", "time", "event", "upstream", "content_hash", "content")}
            for e in state.audit.events(row["request_id"], started, until, decrypt=content)
        ]
    return {
        **row,
        "audit": {
            "enabled": state.audit is not None,
            "content": content and state.audit is not None,
            "events": events,
        },
    }


# Relative to the admin mount.
routes: list[BaseRoute] = [
    Route("/requests", list_requests, methods=["GET"]),
    Route("/requests/{id}", get_request, methods=["GET"]),
]
