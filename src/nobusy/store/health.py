"""The health of the shared backends (Redis now, PostgreSQL next): one small record each.

A running backend says how it is (``Watched.health``); ``nobusy.state`` lists the ones opened
(``AppState.backends``), and ``/readyz``, the status board and ``/metrics`` show that list.
``nobusy check`` calls each backend's ``probe`` listed in ``nobusy.cli.serve.PROBES``. A
backend plugs in with one line in each place: its object appended in ``state.py``, its probe
added to ``PROBES``. Every URL here is redacted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

__all__ = ["Health", "Watched"]

# ok: shared as configured; degraded: serving on a local fallback (key limits counted in the
# replica, rows spilled to a file); down: not serving what needs it (on_state_failure: refuse),
# or, for ``nobusy check``, not reachable.
Status = Literal["ok", "degraded", "down"]


@dataclass(frozen=True, slots=True)
class Health:
    """How one shared backend is now."""

    backend: str  # "redis", "postgresql"
    url: str  # redacted: no password
    status: Status
    detail: str  # one line for people, secrets scrubbed
    since: float | None = None  # Unix time of the last change of status, when known
    latency_ms: float | None = None  # the probe's round trip (``nobusy check``)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class Watched(Protocol):
    """A backend a running app opened, able to say how it is without any I/O."""

    def health(self) -> Health: ...
