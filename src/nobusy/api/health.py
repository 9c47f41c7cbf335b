"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from nobusy.responses import JSONResponse
from nobusy.state import app_state

__all__ = ["healthz", "metrics", "readyz"]


async def healthz(request: Request) -> Response:
    """The process is alive and serving HTTP."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when at least one upstream is usable; 503 otherwise."""
    router = app_state(request).router
    usable = [name for name in router.upstreams if router.usable(name)]
    status = 200 if usable else 503
    return JSONResponse({"status": "ready" if usable else "unavailable", "usable": usable}, status)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's counters."""
    return Response(app_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
