"""What orchestrators and monitoring ask a running process: ``/healthz`` (alive), ``/readyz``
(not draining, and some route can answer now; the shared backends' health and the knowledge
base's workers beside, which never change its status) and ``/metrics`` (Prometheus). An
upstream's own health is ``nobusy.routing``'s business, not this module's."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.responses import JSONResponse
from nobusy.state import AppState, app_state

__all__ = ["healthz", "metrics", "readyz", "routes"]


async def healthz(request: Request) -> Response:
    """The process is alive and serving HTTP."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready (200) when some route of some alias can answer now; 503 with the reasons when
    none can. ``readiness: process`` makes it mean only that the process is up. A process
    that is stopping (draining, ``nobusy.edge.drain``) is never ready. A shared backend that
    does not answer is named under ``degraded`` but leaves the status as it is: every replica
    shares it, so taking this one out of the balancer would help nothing. So is ``knowledge``
    when an ingestion worker or the expired-files sweeper died: chat still answers, and the
    files wait ``in_progress`` for a process whose workers live (a restart takes them up)."""
    state = app_state(request)
    shared = _beside(state)
    if state.drain.draining:
        reason = "draining: this process is stopping and takes no new requests"
        return JSONResponse({"status": "draining", "reason": reason, **shared}, 503)
    if state.settings.readiness == "process":
        return JSONResponse({"status": "ready", "readiness": "process", **shared})
    router = state.router
    # Why each upstream cannot answer now: its circuit is open, or its last real attempt
    # (within the circuit's window) failed. An upstream never tried yet counts as able.
    why = {
        name: stats.why_not(stats.circuit.settings.window) for name, stats in router.stats.items()
    }
    aliases: dict[str, dict[str, Any]] = {}
    for alias, spec in router.models.items():
        routes = [*spec.routes, *spec.overflow]
        able = [str(r) for r in routes if why[r.upstream] is None]
        aliases[alias] = (
            {"ready": bool(able), "routes": able}
            if able
            else {
                "ready": False,
                "why": {str(r): why[r.upstream] for r in routes},
            }
        )
    ready = any(entry["ready"] for entry in aliases.values())
    usable = [name for name, reason in why.items() if reason is None]
    body = {"status": "ready" if ready else "unavailable", "usable": usable, "aliases": aliases}
    body |= shared
    if not ready:
        body["reason"] = "no route of any alias can answer now"
    return JSONResponse(body, 200 if ready else 503)


def _beside(state: AppState) -> dict[str, Any]:
    """This replica's id, its shared backends' health (URLs redacted) and its knowledge base's
    workers, all from memory; ``degraded`` names the backends not answering as configured, and
    ``knowledge`` when a worker or the sweeper died."""
    healths = [backend.health() for backend in state.backends]
    out: dict[str, Any] = {"backends": [health.json() for health in healths]}
    if state.fleet is not None:
        out["replica"] = state.fleet.replica
    degraded = [health.backend for health in healths if not health.ok]
    if state.knowledge is not None:
        knowledge = state.knowledge.health()
        out["knowledge"] = knowledge.json()
        if not knowledge.ok:
            degraded.append("knowledge")
    if degraded:
        out["degraded"] = degraded
    return out


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's counters."""
    return Response(app_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


routes: list[BaseRoute] = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
