"""What one running app holds: built by ``create_app``, reached by handlers as ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from nobusy.admission.limits import Limits
from nobusy.audit import AuditLog
from nobusy.guard import Guard
from nobusy.keys import KeyStore
from nobusy.metrics import Metrics
from nobusy.offload import Offload
from nobusy.routing import Router
from nobusy.settings import Settings
from nobusy.usage import Ledger

__all__ = ["AppState", "app_state"]


@dataclass(slots=True)
class AppState:
    settings: Settings
    router: Router
    metrics: Metrics
    ledger: Ledger
    guard: Guard | None = None
    audit: AuditLog | None = None
    keys: KeyStore | None = None
    limits: Limits | None = None
    offload: Offload = field(default_factory=Offload)


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.nobusy
    return state
