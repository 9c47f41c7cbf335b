"""``create_app(settings)``: the whole service composed in one place. Importing does nothing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from nobusy import web
from nobusy.api import (
    admin,
    chat,
    completions,
    crosscheck,
    embeddings,
    extract,
    files,
    key_groups,
    keys,
    managed,
    messages,
    models,
    openapi,
    ops,
    pool,
    reload,
    request_log,
    responses_api,
    usage,
    usage_series,
    vector_search,
    vector_stores,
)
from nobusy.edge.access import AccessLog
from nobusy.edge.auth import Authenticator, hashers_for
from nobusy.edge.drain import drain_on_signals
from nobusy.edge.middleware import RequestContextMiddleware
from nobusy.errors import NobusyError
from nobusy.guard import Guard
from nobusy.knowledge.base import KnowledgeBase
from nobusy.metrics import Metrics
from nobusy.reload import SettingsSource, reload_on_sighup
from nobusy.responses import http_exception_handler, nobusy_error_handler
from nobusy.routing import Router
from nobusy.routing.pool import pool_rows, tier_rows
from nobusy.settings import Settings
from nobusy.state import AppState, running
from nobusy.store.backends import open_keys
from nobusy.store.interfaces import UsageSink
from nobusy.store.ledger import USAGE_LOG, CommittedAnswers
from nobusy.upstreams import build_upstream
from nobusy.web import session, status

__all__ = ["create_app"]


def create_app(
    settings: Settings, *, drain_signals: bool = False, source: SettingsSource | None = None
) -> Starlette:
    """Build the ASGI app: routes, middleware, error rendering, and upstreams on startup.
    With ``drain_signals`` (``nobusy serve``) SIGTERM and SIGINT drain it before it stops,
    and SIGHUP reloads the configuration from ``source`` (where ``settings`` came from)."""
    metrics = Metrics()
    upstreams = {name: build_upstream(name, spec) for name, spec in settings.upstreams.items()}
    router = Router(settings, upstreams, metrics)
    metrics.watch_upstreams(lambda: router.stats.values(), lambda: router.capacity)
    metrics.watch_pool(lambda: pool_rows(router))  # a reload may add servers
    metrics.watch_tiers(lambda: tier_rows(router))

    guard = Guard.load(settings.guard, Path.cwd()) if settings.guard.lexicons else None
    auth = Authenticator(open_keys(settings, hashers_for(settings.crypto)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, UsageSink]]:
        async with running(settings, router, metrics, auth, guard, source) as state:
            app.state.nobusy = state
            with contextlib.ExitStack() as signals:
                if drain_signals:
                    assert state.reloader is not None
                    signals.enter_context(drain_on_signals(state.drain))
                    signals.enter_context(reload_on_sighup(state.reloader))
                # Lifespan state: CommittedAnswers finds the usage log there.
                yield {USAGE_LOG: state.ledger.log}

    app = Starlette(
        routes=[
            *chat.routes,
            *messages.routes,
            *responses_api.routes,
            *crosscheck.routes,
            *extract.routes,
            *completions.routes,
            *embeddings.routes,
            *files.routes,
            *vector_stores.routes,
            *vector_search.routes,
            *models.routes,
            *ops.routes,
            *openapi.routes,
            admin.mount(
                [
                    *admin.routes,
                    *pool.routes,
                    *reload.routes,
                    *managed.routes,
                    *keys.routes,
                    *key_groups.routes,
                    *status.routes,
                    *usage.routes,
                    *usage_series.routes,
                    *request_log.routes,
                ]
            ),
            *session.routes,
            *web.routes(),
        ],
        middleware=[
            Middleware(AccessLog),
            Middleware(RequestContextMiddleware, settings=settings, authenticator=auth),
            Middleware(CommittedAnswers),
        ],
        exception_handlers={
            NobusyError: nobusy_error_handler,
            HTTPException: http_exception_handler,
        },
        lifespan=lifespan,
    )
    # Registered here, once per app: the knowledge base opens (and reopens) with the lifespan,
    # and until it has, its counters read zero.
    metrics.watch_knowledge(lambda: _knowledge(app))
    return app


def _knowledge(app: Starlette) -> KnowledgeBase | None:
    state: AppState | None = getattr(app.state, "nobusy", None)
    return state.knowledge if state is not None else None
