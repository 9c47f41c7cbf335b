"""``/v1/nobusy/keys``: API keys over HTTP for operators; a new key's secret is returned once.

Every endpoint needs the admin key (or, with none set, a loopback client): the routes sit in
the admin mount, whose guard checks it (``nobusy.api.admin``). The store's work runs on the
thread pool: a write can wait up to the busy timeout for the CLI's lock.
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
from nobusy.keys import Key, validate
from nobusy.knowledge.base import KnowledgeBase
from nobusy.money.budgets import spent
from nobusy.responses import JSONResponse
from nobusy.schema import parse_json_object
from nobusy.state import app_state
from nobusy.store.key_groups import KeyGroups
from nobusy.store.keys import KeyStore

__all__ = [
    "create_key",
    "get_key",
    "key_json",
    "list_keys",
    "revoke_key",
    "routes",
    "topup_key",
    "update_key",
]


def key_json(
    key: Key, now: datetime | None = None, groups: dict[str, str] | None = None
) -> dict[str, Any]:
    """A key as JSON, times in Unix seconds as OpenAI's APIs give them; never its hash;
    its group's name from ``groups`` (by id)."""
    return {
        "object": "nobusy.key",
        "id": key.id,
        "name": key.name,
        "prefix": f"nb-{key.prefix}",
        "status": key.status(now or datetime.now(UTC)),
        "priority": key.priority,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "max_concurrency": key.max_concurrency,
        "quota_tokens": key.quota_tokens,
        "balance": key.balance,
        "models": None if key.models is None else list(key.models),
        "max_wait": key.max_wait,
        "created_at": _unix(key.created_at),
        "expires_at": _unix(key.expires_at),
        "revoked_at": _unix(key.revoked_at),
        "last_used_at": _unix(key.last_used_at),
        "budget": None if key.budget_micros is None else _amount(key.budget_micros),
        "budget_period": key.budget_period,
        "budget_spent": _amount(spent(key, now or datetime.now(UTC))),
        "budget_held": _amount(key.reserved_micros),
        "group_id": key.group_id,
        "group": None if key.group_id is None else (groups or {}).get(key.group_id),
    }


async def list_keys(request: Request) -> Response:
    """Every key, revoked and expired ones too, oldest first."""
    store = _store(request)
    found = await run_in_threadpool(store.list)
    groups = await _group_names(store)
    now = datetime.now(UTC)
    data = [key_json(key, now, groups) for key in found]
    return JSONResponse({"object": "list", "data": data})


async def create_key(request: Request) -> Response:
    """Create a key from ``{"name", ...limits, "stores"}``; the answer holds its secret, this
    once."""
    body = await _body(request)
    if "name" not in body:
        raise InvalidRequest("Missing required parameter: 'name'.", param="name")
    stores = _stores(request, body.pop("stores", None))
    validate(body)  # also refuses unknown fields, before they reach create() as arguments
    store = _store(request)
    key, secret = await run_in_threadpool(lambda: store.create(**body))
    granted = await _grant(request, key.id, stores)
    body = {**await _json(store, key), **granted, "secret": secret}
    return JSONResponse(body, status_code=201)


async def get_key(request: Request) -> Response:
    """One key, by id or name, with the vector stores it was granted."""
    store = _store(request)
    key = await run_in_threadpool(store.get, request.path_params["key"])
    return JSONResponse({**await _json(store, key), **await _grant(request, key.id, None)})


async def update_key(request: Request) -> Response:
    """Change the fields given; null removes a limit, ``expires`` counts from now; ``stores``
    sets the vector stores the key may read and search besides its own."""
    body = await _body(request)
    stores = _stores(request, body.pop("stores", None))
    store, name = _store(request), request.path_params["key"]
    if body or stores is None:
        key = await run_in_threadpool(lambda: store.update(name, **body))
    else:
        key = await run_in_threadpool(store.get, name)
    return JSONResponse({**await _json(store, key), **await _grant(request, key.id, stores)})


async def revoke_key(request: Request) -> Response:
    """Revoke a key for good; every worker refuses it within a second."""
    key = await run_in_threadpool(_store(request).revoke, request.path_params["key"])
    return JSONResponse(key_json(key))


async def topup_key(request: Request) -> Response:
    """Add ``{"tokens": N}`` to a key's balance and quota, or ``{"money": "20"}`` to its
    money budget."""
    body = await _body(request)
    store, name = _store(request), request.path_params["key"]
    if set(body) == {"money"}:
        key = await run_in_threadpool(store.topup_money, name, body["money"])
        return JSONResponse(key_json(key))
    if set(body) != {"tokens"}:
        raise InvalidRequest(
            'The body must be {"tokens": N} or {"money": AMOUNT} and nothing else.',
            param="tokens",
        )
    key = await run_in_threadpool(store.topup, name, body["tokens"])
    return JSONResponse(key_json(key))


def _stores(request: Request, value: Any) -> list[str] | None:
    """The ``stores`` field: vector store ids that exist (400 naming those that do not)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest("stores must be a list of vector store ids.", param="stores")
    kb = _knowledge(request)
    missing = kb.records.missing_stores(value) if kb is not None else value
    if missing:
        raise InvalidRequest(f"stores: no vector store {', '.join(missing)}.", param="stores")
    return list(value)


async def _grant(request: Request, key_id: str, stores: list[str] | None) -> dict[str, Any]:
    """Grant ``stores`` (when given) to the key; ``{"stores": [...]}`` as granted now."""
    kb = _knowledge(request)
    if kb is None:
        return {}
    if stores is not None:
        await run_in_threadpool(kb.records.grant, key_id, stores)
    return {"stores": await run_in_threadpool(kb.records.grants, key_id)}


def _knowledge(request: Request) -> KnowledgeBase | None:
    # A state without a knowledge base (an app built for keys alone): no grants to show.
    kb: KnowledgeBase | None = getattr(app_state(request), "knowledge", None)
    return kb


async def _group_names(store: KeyStore) -> dict[str, str]:
    return {g.id: g.name for g in await run_in_threadpool(KeyGroups(store).list)}


async def _json(store: KeyStore, key: Key) -> dict[str, Any]:
    """``key_json`` with its group's name (one more read only for a key in a group)."""
    groups = await _group_names(store) if key.group_id is not None else None
    return key_json(key, groups=groups)


def _store(request: Request) -> KeyStore:
    store = app_state(request).keys
    assert store is not None
    return store


async def _body(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


def _amount(micros: int) -> str:
    return f"{Decimal(micros) / 1_000_000:.6f}"


def _unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


# Relative to the admin mount.
routes: list[BaseRoute] = [
    Route("/keys", list_keys, methods=["GET"]),
    Route("/keys", create_key, methods=["POST"]),
    Route("/keys/{key}", get_key, methods=["GET"]),
    Route("/keys/{key}", update_key, methods=["PATCH"]),
    Route("/keys/{key}/revoke", revoke_key, methods=["POST"]),
    Route("/keys/{key}/topup", topup_key, methods=["POST"]),
]
