"""``/v1/nobusy/groups``: key groups (teams) and their money budgets, for operators.

In the admin mount like ``nobusy.api.keys``; a key joins a group with ``{"group": NAME}`` on
``/v1/nobusy/keys``. The store's work runs on the thread pool.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.errors import InvalidRequest
from nobusy.responses import JSONResponse
from nobusy.schema import parse_json_object
from nobusy.state import app_state
from nobusy.store.key_groups import KeyGroup, KeyGroups

__all__ = ["group_json", "routes"]


def group_json(group: KeyGroup, members: int | None = None) -> dict[str, Any]:
    """A group as JSON: amounts as decimal text in pricing.currency, times in Unix seconds."""
    out: dict[str, Any] = {
        "object": "nobusy.key_group",
        "id": group.id,
        "name": group.name,
        "budget": None if group.budget_micros is None else _amount(group.budget_micros),
        "budget_period": group.budget_period,
        "budget_spent": _amount(group.spent(datetime.now(UTC))),
        "budget_held": _amount(group.reserved_micros),
        "created_at": int(group.created_at.timestamp()),
    }
    if members is not None:
        out["keys"] = members
    return out


async def list_groups(request: Request) -> Response:
    """Every group, by name."""
    groups = _groups(request)
    found = await run_in_threadpool(groups.list)
    data = [group_json(g, await run_in_threadpool(groups.members, g)) for g in found]
    return JSONResponse({"object": "list", "data": data})


async def create_group(request: Request) -> Response:
    """Create a group from ``{"name", "budget", "budget_period"}``."""
    body = await _body(request)
    if "name" not in body:
        raise InvalidRequest("Missing required parameter: 'name'.", param="name")
    groups = _groups(request)
    group = await run_in_threadpool(lambda: groups.create(**body))
    return JSONResponse(group_json(group, 0), status_code=201)


async def get_group(request: Request) -> Response:
    groups = _groups(request)
    group = await run_in_threadpool(groups.get, request.path_params["group"])
    return JSONResponse(group_json(group, await run_in_threadpool(groups.members, group)))


async def update_group(request: Request) -> Response:
    """Change the fields given; a null budget removes it."""
    body = await _body(request)
    groups, name = _groups(request), request.path_params["group"]
    group = await run_in_threadpool(lambda: groups.update(name, **body))
    return JSONResponse(group_json(group))


async def delete_group(request: Request) -> Response:
    """Delete a group; its keys stay, in no group."""
    group = await run_in_threadpool(_groups(request).delete, request.path_params["group"])
    return JSONResponse({**group_json(group), "deleted": True})


async def topup_group(request: Request) -> Response:
    """Add ``{"money": "20"}`` to the group's money budget."""
    body = await _body(request)
    if set(body) != {"money"}:
        raise InvalidRequest('The body must be {"money": AMOUNT} and nothing else.', param="money")
    groups = _groups(request)
    group = await run_in_threadpool(groups.topup, request.path_params["group"], body["money"])
    return JSONResponse(group_json(group))


def _groups(request: Request) -> KeyGroups:
    store = app_state(request).keys
    assert store is not None
    return KeyGroups(store)


async def _body(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


def _amount(micros: int) -> str:
    return f"{Decimal(micros) / 1_000_000:.6f}"


# Relative to the admin mount.
routes: list[BaseRoute] = [
    Route("/groups", list_groups, methods=["GET"]),
    Route("/groups", create_group, methods=["POST"]),
    Route("/groups/{group}", get_group, methods=["GET"]),
    Route("/groups/{group}", update_group, methods=["PATCH"]),
    Route("/groups/{group}", delete_group, methods=["DELETE"]),
    Route("/groups/{group}/topup", topup_group, methods=["POST"]),
]
