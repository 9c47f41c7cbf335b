"""``/v1/nobusy/upstreams`` and ``/v1/nobusy/aliases``: add, edit, disable and remove them live.

Every change is one edit of the managed overlay (``nobusy.overlay``): the settings are built
with the edited overlay first, and an edit that would make the config invalid is refused (400,
``nobusy check``'s message) with nothing written. A valid one is written atomically, applied
by a reload (``nobusy.reload``) and recorded in the audit log (who, what, before and after,
secrets masked). Upstream API keys are never returned; one given here is written encrypted
with the data key (``enc:``, as ``nobusy secret encrypt`` does).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy import overlay
from nobusy.api.reload import reloader
from nobusy.crypto import CryptoError, load_suite
from nobusy.edge.auth import SESSION_COOKIE
from nobusy.errors import ConfigError, InvalidRequest, NotFound
from nobusy.reload import tell_workers
from nobusy.responses import JSONResponse
from nobusy.routing.checks import probe_answer
from nobusy.schema import parse_json_object
from nobusy.settings import (
    CONFIG_AAD,
    ENCRYPTED_PREFIX,
    ModelAlias,
    Settings,
    read_config_file,
)
from nobusy.state import AppState, app_state
from nobusy.upstreams.base import UpstreamSettings

__all__ = ["managed_names", "routes", "upstream_json"]

log = logging.getLogger("nobusy.reload")

_MASK = "********"
_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}")
Edit = Callable[[dict[str, dict[str, Any]]], None]


def upstream_json(name: str, spec: UpstreamSettings) -> dict[str, Any]:
    """An upstream's definition as the API shows it: secrets masked."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    for field in type(spec).model_fields:
        if isinstance(getattr(spec, field), SecretStr):
            data[field] = _MASK
    return {"name": name, **data, "kind": spec.kind, "enabled": spec.enabled}


def alias_json(name: str, spec: ModelAlias) -> dict[str, Any]:
    # `knowledge` too, so that an edit's before/after (and its audit) show a store attached or
    # detached, and the console can tell when the config file still attaches one.
    knowledge = None if spec.knowledge is None else spec.knowledge.model_dump(mode="json")
    return {
        "name": name,
        "routes": _tiers(spec.routes),
        "overflow": _tiers(spec.overflow),
        "knowledge": knowledge,
        "enabled": spec.enabled,
    }


def _tiers(routes: Any) -> list[Any]:
    """Routes as the config writes them: one per tier, a list for a tier of several."""
    tiers: dict[int, list[str]] = {}
    for route in routes:
        tiers.setdefault(route.tier, []).append(str(route))
    return [t[0] if len(t) == 1 else t for _, t in sorted(tiers.items())]


# --- reading --------------------------------------------------------------------------------


async def get_upstream(request: Request) -> Response:
    state, name = app_state(request), request.path_params["name"]
    return JSONResponse(upstream_json(name, _upstream(state.settings, name)))


async def list_aliases(request: Request) -> Response:
    """Every alias (disabled ones too) with its routes."""
    state = app_state(request)
    managed = _read(state).get("models", {})
    data = [
        {**alias_json(name, spec), "managed": name in managed}
        for name, spec in state.settings.models.items()
    ]
    return JSONResponse({"object": "list", "data": data, "managed_file": _path(state)})


async def get_alias(request: Request) -> Response:
    state, name = app_state(request), request.path_params["name"]
    return JSONResponse(alias_json(name, _alias(state.settings, name)))


# --- upstreams ------------------------------------------------------------------------------


async def create_upstream(request: Request) -> Response:
    """Add an upstream from ``{"name", "kind", ...its settings}``."""
    state, body = app_state(request), await _body(request)
    name = body.pop("name", None)
    if not isinstance(name, str) or not name or "/" in name:
        raise InvalidRequest("'name' must be a non-empty name without '/'.", param="name")
    if name in state.settings.upstreams:
        raise InvalidRequest(f"An upstream named '{name}' exists; PATCH it.", param="name")
    spec = _secrets(state, body)

    def add(draft: dict[str, dict[str, Any]]) -> None:
        draft.setdefault("upstreams", {})[name] = spec

    return await _edit(request, add, "upstream.create", "upstreams", name, status=201)


async def update_upstream(request: Request) -> Response:
    """Change the keys given (null: back to the config file's value or the default)."""
    state, name = app_state(request), request.path_params["name"]
    _upstream(state.settings, name)
    changes = _secrets(state, await _body(request))
    changes.pop("name", None)
    return await _patch(request, "upstreams", name, changes, "upstream.update")


async def delete_upstream(request: Request) -> Response:
    """Remove an upstream (refused while an alias routes to it)."""
    state, name = app_state(request), request.path_params["name"]
    _upstream(state.settings, name)
    return await _remove(request, "upstreams", name, "upstream.delete")


async def probe_upstream(request: Request) -> Response:
    """A tiny real request through the upstream: its models, then a one-token answer."""
    state, name = app_state(request), request.path_params["name"]
    upstream = state.router.upstreams.get(name)
    if upstream is None:
        raise NotFound(f"No upstream named '{name}'.", param="name")
    model = next(
        (
            r.model
            for spec in state.settings.models.values()
            for r in (*spec.routes, *spec.overflow)
            if r.upstream == name and r.model
        ),
        None,
    )
    answer = model is not None or upstream.settings.has_default_model()
    probe = await probe_answer(upstream, model, answer=answer)
    return JSONResponse(
        {
            "name": name,
            "status": "ok" if probe.ok else "down",
            "latency_ms": round(probe.latency_ms, 1),
            "models": probe.models[:20],
            "model": model,
            "error": None if probe.ok else probe.detail,
        }
    )


# --- aliases --------------------------------------------------------------------------------


async def create_alias(request: Request) -> Response:
    """Add an alias from ``{"name", "routes": [...], "overflow": [...]}``."""
    state, body = app_state(request), await _body(request)
    name = body.pop("name", None)
    if not isinstance(name, str) or not name:
        raise InvalidRequest("'name' must be a non-empty alias.", param="name")
    if name in state.settings.models:
        raise InvalidRequest(f"An alias named '{name}' exists; PATCH it.", param="name")

    def add(draft: dict[str, dict[str, Any]]) -> None:
        draft.setdefault("models", {})[name] = body

    return await _edit(request, add, "alias.create", "models", name, status=201)


async def update_alias(request: Request) -> Response:
    state, name = app_state(request), request.path_params["name"]
    _alias(state.settings, name)
    changes = await _body(request)
    changes.pop("name", None)
    return await _patch(request, "models", name, changes, "alias.update")


def _switch(section: str, enabled: bool) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint that turns an upstream (``section`` "upstreams") or an alias ("models") on
    or off: ``enabled`` written out, not the key dropped, since the YAML itself may say false."""
    find = _upstream if section == "upstreams" else _alias
    kind = "upstream" if section == "upstreams" else "alias"
    action = f"{kind}.{'enable' if enabled else 'disable'}"

    async def switch(request: Request) -> Response:
        name = request.path_params["name"]
        find(app_state(request).settings, name)
        return await _patch(request, section, name, {"enabled": enabled}, action)

    return switch


async def delete_alias(request: Request) -> Response:
    state, name = app_state(request), request.path_params["name"]
    _alias(state.settings, name)
    return await _remove(request, "models", name, "alias.delete")


# --- one edit -------------------------------------------------------------------------------


async def _patch(
    request: Request, section: str, name: str, changes: dict[str, Any], action: str
) -> Response:
    def patch(draft: dict[str, dict[str, Any]]) -> None:
        entries = draft.setdefault(section, {})
        entry = entries.get(name)
        entry = dict(entry) if isinstance(entry, dict) else {}
        for key, value in changes.items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value
        if entry:
            entries[name] = entry
        else:
            entries.pop(name, None)

    return await _edit(request, patch, action, section, name)


async def _remove(request: Request, section: str, name: str, action: str) -> Response:
    in_file = name in _file_section(app_state(request), section)

    def remove(draft: dict[str, dict[str, Any]]) -> None:
        entries = draft.setdefault(section, {})
        if in_file:
            entries[name] = None  # the file's entry stays in the file, removed by the overlay
        else:
            entries.pop(name, None)

    return await _edit(request, remove, action, section, name)


async def _edit(
    request: Request, edit: Edit, action: str, section: str, name: str, status: int = 200
) -> Response:
    """Check the edited overlay by building the settings with it; write it, apply it, audit
    it. Refused edits write nothing."""
    state = app_state(request)
    reload = reloader(request)
    async with reload.editing:  # one edit at a time: read, check, write, apply
        path = state.settings.managed_file
        assert path is not None  # load_settings always resolves it
        draft = copy.deepcopy(_read(state))
        edit(draft)
        before = _entry(state.settings, section, name)
        try:
            settings = reload.load(managed=draft)
        except ConfigError as exc:
            raise InvalidRequest(f"config error: {exc.message}", code="invalid_config") from None
        await asyncio.to_thread(overlay.write, path, draft)
        outcome = await reload.reload(settings)
    after = _entry(settings, section, name)
    _audit(request, state, action, section, name, before, after)
    tell_workers(state.settings)
    return JSONResponse(
        {"name": name, "before": before, "after": after, "reload": outcome.as_dict()},
        status_code=status,
    )


def _audit(
    request: Request,
    state: AppState,
    action: str,
    section: str,
    name: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    who = _who(request)
    log.info("%s %s by %s", action, name, who)
    if state.audit is None:
        return
    kind = {"upstream": name} if section == "upstreams" else {"alias": name}
    state.audit.append(
        "config",
        getattr(request.state, "request_id", ""),
        {"action": action, "name": name, "who": who, "before": before, "after": after},
        **kind,
    )


def _who(request: Request) -> str:
    address = request.client.host if request.client else "?"
    if request.headers.get("authorization"):
        return f"admin key from {address}"
    if request.cookies.get(SESSION_COOKIE):
        return f"console session from {address}"
    return f"loopback client {address}"


def _entry(settings: Settings, section: str, name: str) -> dict[str, Any] | None:
    if section == "upstreams":
        spec = settings.upstreams.get(name)
        return None if spec is None else upstream_json(name, spec)
    alias = settings.models.get(name)
    return None if alias is None else alias_json(name, alias)


def managed_names(state: AppState, section: str) -> set[str]:
    """The entries of ``section`` the overlay adds or changes."""
    return set(_read(state).get(section, {}))


def _read(state: AppState) -> dict[str, dict[str, Any]]:
    path = state.settings.managed_file
    return {} if path is None else overlay.read_raw(path)


def _path(state: AppState) -> str | None:
    path = state.settings.managed_file
    return None if path is None else str(path)


def _file_section(state: AppState, section: str) -> set[str]:
    """The names the config file itself defines in ``section`` (the overlay aside)."""
    source = state.reloader.source if state.reloader is not None else None
    path = source.config_file if source is not None else os.environ.get("NOBUSY_CONFIG")
    if not path:
        return set()
    entries = read_config_file(Path(path), os.environ).get(section)
    return set(entries) if isinstance(entries, dict) else set()


def _secrets(state: AppState, body: dict[str, Any]) -> dict[str, Any]:
    """API keys given in clear are kept encrypted with the data key (``enc:``); a masked value
    sent back unchanged means "keep it"."""
    out = dict(body)
    for key in ("api_key",):
        value = out.get(key)
        if value == _MASK:
            out.pop(key)
        elif (
            isinstance(value, str)
            and value
            and not value.startswith(ENCRYPTED_PREFIX)
            and not _ENV_REF.fullmatch(value)  # `${VAR}`: resolved from the environment
        ):
            settings = state.settings
            try:
                suite = load_suite(settings.crypto, settings.data_dir, os.environ)
            except CryptoError:
                continue  # no data key can be made: the overlay file (0600) holds it as given
            token = suite.encrypt(value.encode("utf-8"), CONFIG_AAD)
            out[key] = ENCRYPTED_PREFIX + base64.b64encode(token).decode("ascii")
    return out


def _upstream(settings: Settings, name: str) -> UpstreamSettings:
    spec = settings.upstreams.get(name)
    if spec is None:
        raise NotFound(f"No upstream named '{name}'.", param="name")
    return spec


def _alias(settings: Settings, name: str) -> ModelAlias:
    spec = settings.models.get(name)
    if spec is None:
        raise NotFound(f"No alias named '{name}'.", param="name")
    return spec


async def _body(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


# Relative to the admin mount; GET /upstreams (the live view) is nobusy.api.admin's.
routes: list[BaseRoute] = [
    Route("/upstreams", create_upstream, methods=["POST"]),
    Route("/upstreams/{name}", get_upstream, methods=["GET"]),
    Route("/upstreams/{name}", update_upstream, methods=["PATCH"]),
    Route("/upstreams/{name}", delete_upstream, methods=["DELETE"]),
    Route("/upstreams/{name}/probe", probe_upstream, methods=["POST"]),
    Route("/upstreams/{name}/enable", _switch("upstreams", True), methods=["POST"]),
    Route("/upstreams/{name}/disable", _switch("upstreams", False), methods=["POST"]),
    Route("/aliases", list_aliases, methods=["GET"]),
    Route("/aliases", create_alias, methods=["POST"]),
    Route("/aliases/{name}", get_alias, methods=["GET"]),
    Route("/aliases/{name}", update_alias, methods=["PATCH"]),
    Route("/aliases/{name}", delete_alias, methods=["DELETE"]),
    Route("/aliases/{name}/enable", _switch("models", True), methods=["POST"]),
    Route("/aliases/{name}/disable", _switch("models", False), methods=["POST"]),
]
