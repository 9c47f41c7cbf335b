"""Active health checks: upstreams with ``health_check_interval`` are probed in the background.

A failed probe counts as a failed attempt (so a dead upstream is ejected before users meet
it); a passing probe closes a half-open circuit, putting a recovered upstream back sooner.
A ``Retry-After`` pause is left alone: the upstream said when to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nobusy.routing.circuit import State
from nobusy.routing.router import Router

__all__ = ["Prober"]

log = logging.getLogger("nobusy.probing")


class Prober:
    """One background task per probed upstream, started and stopped with the app."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for name, spec in self.router.settings.upstreams.items():
            if spec.health_check_interval is not None:
                task = asyncio.create_task(self._loop(name, spec.health_check_interval))
                self.tasks.append(task)

    async def _loop(self, name: str, interval: float) -> None:
        upstream = self.router.upstreams[name]
        stats = self.router.stats[name]
        while True:
            await asyncio.sleep(interval)
            probe = await upstream.probe()
            circuit = stats.circuit
            if probe.ok:
                # Not noted as a success: /models answering says nothing about completions,
                # and readiness goes by real outcomes.
                if circuit.state is State.HALF_OPEN:
                    circuit.success()
                continue
            log.warning("health probe of %s failed: %s", name, probe.detail)
            stats.note_failure(f"health probe: {probe.detail}")
            if circuit.state is not State.OPEN:
                circuit.failure(f"health probe: {probe.detail}")

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
