"""``create_app(settings)``: the whole service composed in one place. Importing does nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from nobusy.admission.limits import KeyLimits, Limits, SharedKeyLimits
from nobusy.admission.shared import SharedSlots
from nobusy.api import admin, health
from nobusy.api import keys as keys_api
from nobusy.api.chat import chat_completions
from nobusy.api.models import list_models
from nobusy.api.openapi import openapi_json
from nobusy.audit import AuditError, AuditLog
from nobusy.auth import Authenticator, hashers_for
from nobusy.crypto import load_suite
from nobusy.errors import NobusyError
from nobusy.guard import Guard
from nobusy.keys import KeyStore
from nobusy.metrics import Metrics
from nobusy.middleware import RequestContextMiddleware
from nobusy.probing import Prober
from nobusy.responses import http_exception_handler, nobusy_error_handler
from nobusy.routing import Router
from nobusy.settings import Settings, load_settings
from nobusy.state import AppState
from nobusy.upstreams import build_upstream
from nobusy.usage import USAGE_LOG, CommittedAnswers, Ledger, UsageLog
from nobusy.web import routes as web_routes

__all__ = ["create_app", "create_app_from_env"]


def create_app(settings: Settings) -> Starlette:
    """Build the ASGI app: routes, middleware, error rendering, and upstreams on startup."""
    metrics = Metrics()
    upstreams = {name: build_upstream(name, spec) for name, spec in settings.upstreams.items()}
    router = Router(settings, upstreams, metrics)
    metrics.watch_upstreams(lambda: router.health.values(), lambda: router.capacity)

    guard = Guard.load(settings.guard, Path.cwd()) if settings.guard.lexicons else None
    keys = KeyStore(settings.data_dir, hashers_for(settings.crypto))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, UsageLog]]:
        usage_log = UsageLog(settings.data_dir)
        audit = _open_audit(settings)
        ledger = Ledger(usage_log, metrics, audit, keys)
        # One worker counts per-key limits in memory; several share them through SQLite.
        limits: Limits = SharedKeyLimits(settings.data_dir) if settings.workers > 1 else KeyLimits()
        state = AppState(settings, router, metrics, ledger, guard, audit, keys, limits)
        app.state.nobusy = state
        for upstream in upstreams.values():
            await upstream.start()
        shared, pump = _share_ceilings(settings, router)
        prober = Prober(router)
        prober.start()
        pruning = asyncio.create_task(_prune_audit(audit)) if audit is not None else None
        try:
            yield {USAGE_LOG: usage_log}  # lifespan state: CommittedAnswers finds it there
        finally:
            await prober.stop()
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            if shared is not None:
                shared.close()
            if pruning is not None:
                pruning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruning
            await router.aclose()
            state.offload.close()
            usage_log.close()
            if audit is not None:
                audit.close()
            ledger.flush_charges()
            keys.close()
            limits.close()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            Route("/metrics", health.metrics, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/v1/nobusy/upstreams", admin.list_upstreams, methods=["GET"]),
            Route("/v1/nobusy/upstreams/{name}/reset", admin.reset_upstream, methods=["POST"]),
            Route("/v1/nobusy/keys", keys_api.list_keys, methods=["GET"]),
            Route("/v1/nobusy/keys", keys_api.create_key, methods=["POST"]),
            Route("/v1/nobusy/keys/{key}", keys_api.get_key, methods=["GET"]),
            Route("/v1/nobusy/keys/{key}", keys_api.update_key, methods=["PATCH"]),
            Route("/v1/nobusy/keys/{key}/revoke", keys_api.revoke_key, methods=["POST"]),
            Route("/v1/nobusy/keys/{key}/topup", keys_api.topup_key, methods=["POST"]),
            *web_routes(),
        ],
        middleware=[
            Middleware(
                RequestContextMiddleware,
                max_body_bytes=settings.max_body_bytes,
                body_timeout=settings.body_timeout,
                authenticator=Authenticator(keys),
            ),
            Middleware(CommittedAnswers),
        ],
        exception_handlers={
            NobusyError: nobusy_error_handler,
            HTTPException: http_exception_handler,
        },
        lifespan=lifespan,
    )


async def _prune_audit(audit: AuditLog) -> None:
    """Retention: rows older than ``retention_days`` go at start and every six hours."""
    log = logging.getLogger("nobusy.audit")
    while True:
        try:
            removed = await asyncio.to_thread(audit.prune)
        except AuditError as exc:  # a broken chain is kept as evidence, never pruned away
            log.error("audit retention skipped: %s", exc)
        else:
            if removed:
                log.info("pruned %d audit rows past retention", removed)
        await asyncio.sleep(6 * 3600)


def _share_ceilings(
    settings: Settings, router: Router
) -> tuple[SharedSlots | None, asyncio.Task[None] | None]:
    """With several workers, count upstream ceilings together across the processes."""
    ceilings = {
        name: spec.max_concurrency
        for name, spec in settings.upstreams.items()
        if spec.max_concurrency is not None
    }
    if settings.workers <= 1 or not ceilings:
        return None, None
    shared = SharedSlots(settings.data_dir, ceilings)
    router.capacity.share(shared)
    return shared, asyncio.create_task(router.capacity.pump())


def _open_audit(settings: Settings) -> AuditLog | None:
    if not settings.audit.enabled:
        return None
    suite = load_suite(settings.crypto, settings.data_dir, os.environ)
    audit = settings.audit
    return AuditLog(settings.data_dir, suite, audit.store, audit.retention_days)


def create_app_from_env() -> Starlette:
    """Factory for server worker processes: settings come from the NOBUSY_* environment."""
    return create_app(load_settings())
