"""Circuit breaking and outlier detection for one upstream: a pure policy with an injected clock.

    closed ──(N consecutive failures, or failure rate over a window,
    │         or 401/403, or Retry-After)──▶ open ──(ejection over)──▶ half-open
    ▲                                                                    │
    └────────────────── one probe request succeeds ◀──────────────────────┘
                        (it fails: open again, for longer)

Ejection time grows with each ejection (``base × n``, capped), as in Envoy's outlier
detection; a ``Retry-After`` is the upstream's own statement of when to come back, so it sets
the time directly and does not count as an ejection.

With ``state`` set, ``told`` hears every verdict of this process (opened for so long, closed)
so the other replicas apply it (``follow``) within milliseconds (``store.redis_signals``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from nobusy.upstreams.base import CircuitSettings

__all__ = ["Circuit", "State"]

log = logging.getLogger("nobusy.circuit")


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class Circuit:
    """The health of one upstream as seen by this process."""

    settings: CircuitSettings = field(default_factory=lambda: CircuitSettings())
    clock: Callable[[], float] = time.monotonic
    consecutive: int = 0
    ejections: int = 0
    open_until: float = 0.0
    probing: bool = False
    reason: str = ""
    name: str = ""  # the upstream's, for the log
    # Hears this process's verdicts: ("open", seconds, reason, ejections) or ("close", ...).
    told: Callable[[str, float, str, int], None] | None = None
    _history: deque[tuple[float, bool]] = field(default_factory=deque)

    @property
    def state(self) -> State:
        if self.open_until > self.clock():
            return State.OPEN
        if self.open_until:
            return State.HALF_OPEN
        return State.CLOSED

    def available(self) -> bool:
        """May a request go here now? In half-open, only one probe at a time."""
        state = self.state
        return state is State.CLOSED or (state is State.HALF_OPEN and not self.probing)

    def begin(self) -> None:
        """A request is sent; in half-open it is the probe."""
        if self.state is State.HALF_OPEN:
            self.probing = True

    def retry_in(self) -> float:
        """Seconds until this upstream may be tried again (0 when it may be now)."""
        return max(0.0, self.open_until - self.clock())

    def success(self, counted: bool = True) -> None:
        """A request succeeded; ``counted=False`` keeps it out of the failure rate (it still
        closes a half-open circuit and ends a run of consecutive failures)."""
        if counted:
            self._record(True)
        self.consecutive = 0
        # Only a success seen after the ejection ended closes the circuit. A request that was
        # already in flight when the circuit opened proves nothing about the upstream now.
        if self.open_until and self.state is State.HALF_OPEN:
            self.open_until = 0.0
            self.ejections = max(0, self.ejections - 1)
            self.reason = ""
            log.warning("circuit of %s closed: it answered again", self.name or "?")
            self._tell("close", 0.0)
        self.probing = False

    def failure(
        self, reason: str, *, retry_after: float | None = None, misconfigured: bool = False
    ) -> None:
        self._record(False)
        self.consecutive += 1
        self.reason = reason
        was_probe, self.probing = self.probing, False
        if retry_after is not None and retry_after > 0:
            if self.open_until <= self.clock():
                log.warning(
                    "circuit of %s open for %gs (it asked to wait): %s",
                    self.name or "?", retry_after, reason,
                )  # fmt: skip
            self.open_until = max(self.open_until, self.clock() + retry_after)
            self._tell("open", self.open_until - self.clock())
            return
        if was_probe or misconfigured or self._tripped():
            self._eject()

    def reset(self) -> None:
        """Back into rotation now, history forgotten (an operator's decision)."""
        if self.open_until:
            log.warning("circuit of %s closed by an operator's reset", self.name or "?")
            self._tell("close", 0.0)
        self.consecutive = self.ejections = 0
        self.open_until = 0.0
        self.probing = False
        self.reason = ""
        self._history.clear()

    def follow(self, event: str, seconds: float, reason: str, ejections: int) -> None:
        """Apply another replica's verdict: open for ``seconds`` more (never shorter than this
        process's own), or closed."""
        if event == "open":
            until = self.clock() + seconds
            if until > self.open_until:
                if self.open_until <= self.clock():
                    log.warning(
                        "circuit of %s open for %gs (told by another replica): %s",
                        self.name or "?", round(seconds, 3), reason,
                    )  # fmt: skip
                self.open_until, self.reason = until, reason
                self.ejections = max(self.ejections, ejections)
        elif event == "close" and self.open_until:
            self.open_until = 0.0
            self.reason = ""
            self.probing = False
            log.warning("circuit of %s closed (told by another replica)", self.name or "?")

    def _tell(self, event: str, seconds: float) -> None:
        if self.told is not None:
            self.told(event, seconds, self.reason, self.ejections)

    def cancelled(self) -> None:
        """The request ended without a verdict (the client left): free the probe slot."""
        self.probing = False

    def _tripped(self) -> bool:
        if self.consecutive >= self.settings.consecutive_failures:
            return True
        history = self._history
        if len(history) < self.settings.min_requests:
            return False
        failed = sum(1 for _, ok in history if not ok)
        return failed / len(history) >= self.settings.failure_rate

    def _eject(self) -> None:
        self.ejections += 1
        seconds = min(self.settings.ejection * self.ejections, self.settings.max_ejection)
        self.open_until = self.clock() + seconds
        self.consecutive = 0
        self._history.clear()
        log.warning(
            "circuit of %s open for %gs (ejection %d): %s",
            self.name or "?", seconds, self.ejections, self.reason,
        )  # fmt: skip
        self._tell("open", seconds)

    def _record(self, ok: bool) -> None:
        now = self.clock()
        history = self._history
        history.append((now, ok))
        horizon = now - self.settings.window
        while history and history[0][0] < horizon:
            history.popleft()
