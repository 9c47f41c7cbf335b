"""``/v1/nobusy/usage``: the usage log grouped, with spend, for the admin key (what
``nobusy usage`` prints, as JSON).

``GET /v1/nobusy/usage?by=key|model|upstream|day&since=7d``: each group's requests, outcomes,
tokens and money; amounts are strings with six decimals (exact: the rows' micro-units summed).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any

import click
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.cli.audit import parse_since
from nobusy.errors import InvalidRequest
from nobusy.responses import JSONResponse
from nobusy.settings import Settings
from nobusy.state import app_state
from nobusy.store.backends import reading
from nobusy.store.usage import GROUPS, Group, summarize

__all__ = ["routes", "usage_report"]


async def usage_report(request: Request) -> Response:
    """The usage log since ``since`` (all if absent) grouped ``by``, with spend and totals."""
    by = request.query_params.get("by", "key")
    if by not in GROUPS:
        raise InvalidRequest(f"by: must be one of {', '.join(GROUPS)}, got {by!r}", param="by")
    since_text = request.query_params.get("since")
    try:
        since = parse_since(since_text) if since_text else None
    except click.BadParameter as exc:  # the CLI's parser: its message says what it expects
        raise InvalidRequest(f"since: {exc.message}", param="since") from None
    settings = app_state(request).settings
    groups = await run_in_threadpool(_read, settings, by, since)
    total = sum(g.cost_micros for g in groups)
    return JSONResponse(
        {
            "by": by,
            "since": None if since is None else since.isoformat(),
            "currency": settings.pricing.currency,
            "groups": [_group_json(g) for g in groups],
            "total_spend": _amount(total),
            "total_spend_micros": total,
        }
    )


def _read(settings: Settings, by: str, since: datetime | None) -> list[Group]:
    with reading(settings) as conn:
        return summarize(conn, by, since)


def _group_json(group: Group) -> dict[str, Any]:
    out = asdict(group)
    del out["ttfts"], out["queue_ms_total"]
    out["spend"] = _amount(group.cost_micros)
    out["first_choice_spend"] = _amount(group.first_choice_cost_micros)
    out["failover_extra"] = _amount(group.cost_micros - group.first_choice_cost_micros)
    return out


def _amount(micros: int) -> str:
    return f"{Decimal(micros) / 1_000_000:.6f}"


# Relative to the admin mount.
routes: list[BaseRoute] = [Route("/usage", usage_report, methods=["GET"])]
