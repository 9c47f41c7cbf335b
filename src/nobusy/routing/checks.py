"""Active health checks: upstreams with ``health_check_interval`` are probed in the background.

A failed probe counts as a failed attempt (so a dead upstream is ejected before users meet
it); a passing probe closes a half-open circuit, putting a recovered upstream back sooner.
A ``Retry-After`` pause is left alone: the upstream said when to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nobusy.errors import UpstreamError
from nobusy.routing.circuit import State
from nobusy.routing.router import Router
from nobusy.upstreams.base import Probe, Upstream, UpstreamCall, has_token

__all__ = ["Prober", "probe_answer"]

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
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def restart(self) -> None:
        """Probe the upstreams of the router's table now (after a reload)."""
        await self.stop()
        self.start()


async def probe_answer(upstream: Upstream, model: str | None, answer: bool = True) -> Probe:
    """``/models`` (or loading the model), then, with ``answer``, a real one-token answer:
    listing models proves little about answering them (a key without credit lists them fine).
    ``nobusy check`` and the console's Test button."""
    probe = await upstream.probe()
    if not probe.ok or not answer:
        return probe
    body = {"messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1}
    call = UpstreamCall(model=model, body=body)
    timeout = upstream.settings.first_token_timeout
    start = time.perf_counter()
    chunks = aiter(upstream.stream(call))
    try:
        async with asyncio.timeout(timeout):
            async for chunk in chunks:
                if has_token(chunk):
                    break
    except UpstreamError as exc:
        probe.ok, probe.detail = False, f"answer: {exc.message}"
    except TimeoutError:
        probe.ok, probe.detail = False, f"answer: no first token within {timeout:g}s"
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    probe.latency_ms = (time.perf_counter() - start) * 1000
    return probe
