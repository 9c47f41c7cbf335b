"""Graceful drain: a process told to stop (SIGTERM, SIGINT) breaks no answer it has begun.

The first signal makes ``Drain`` refuse new chat requests at once (503 ``draining`` with
``Retry-After``) and ``/readyz`` answer 503, while the requests already running go on for up
to ``drain_timeout`` seconds; those still running then are cut (a 503, or an error event ending
the stream) and logged with the outcome ``drained``. Only then is the signal handed to uvicorn,
which closes the socket and runs the lifespan's closing: the usage and audit logs committed,
the upstream slots shared with other workers given back.

Why the socket stays open while draining, rather than closed at once as uvicorn's own
``timeout_graceful_shutdown`` does: an orchestrator sends SIGTERM and takes the process out of
its load balancer's targets at the same time, and the second takes a few seconds to reach every
balancer (Kubernetes endpoints, kube-proxy, ingress). A closed socket meanwhile is a refused
connection, which most clients report as an error; a 503 with ``Retry-After`` is retried by the
OpenAI SDKs and tells a balancer polling ``/readyz`` to stop sending. The drain ends as soon as
nothing runs, so an idle process still stops at once (a ``preStop`` pause covers the balancer
delay there). With ``--workers N`` each worker drains itself: uvicorn's parent passes SIGTERM on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from prometheus_client import Gauge

from nobusy.errors import Draining
from nobusy.store.usage import UsageRecord

__all__ = ["DRAINED", "Drain", "drain_on_signals"]

DRAINED = "drained"  # the usage outcome of a request still running at drain_timeout

# Seconds the requests cut at drain_timeout get to write their usage rows and end.
_CUT_GRACE = 5.0

log = logging.getLogger("nobusy")


class Drain:
    """The chat requests running in this process, and whether it still admits new ones."""

    def __init__(self, timeout: float = 30.0, gauge: Gauge | None = None) -> None:
        self.timeout = timeout
        self.draining = False
        self._gauge = gauge
        self._running: dict[asyncio.Task[Any], UsageRecord] = {}
        self._cut: set[asyncio.Task[Any]] = set()
        self._waited = 0  # requests the drain waited for
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        """Chat requests running in this process now."""
        return len(self._running)

    def check(self) -> None:
        """Refuse a new request once the process is stopping."""
        if self.draining:
            raise Draining("This server is restarting and takes no new requests; retry.")

    def enter(self, record: UsageRecord) -> asyncio.Task[Any]:
        """Count the current request as running until ``leave``; its task is returned."""
        task = asyncio.current_task()
        assert task is not None
        self._running[task] = record
        self._idle.clear()
        if self.draining:  # its body was still arriving when the drain began
            self._waited += 1
        return task

    def leave(self, task: asyncio.Task[Any]) -> None:
        self._running.pop(task, None)
        self._cut.discard(task)
        if not self._running:
            self._idle.set()

    def was_cut(self, task: asyncio.Task[Any]) -> bool:
        """Was this request cancelled by the drain (rather than by the client or the server)?"""
        return task in self._cut

    async def run(self, why: str) -> None:
        """Stop admitting, wait for the running requests up to ``timeout``, cut the rest."""
        self.draining = True
        if self._gauge is not None:
            self._gauge.set(1)
        started = time.monotonic()
        self._waited = waited = len(self._running)
        log.info(
            "draining (%s, process %d): new requests refused, /readyz 503; waiting up to %gs "
            "for %d running request%s",
            why,
            os.getpid(),
            self.timeout,
            waited,
            "" if waited == 1 else "s",
        )
        cut = 0
        if not await self._until_idle(self.timeout):
            cut = len(self._running)
            for task, record in self._running.items():
                record.outcome = DRAINED  # before the cancel: a stream writes its row at once
                self._cut.add(task)
                task.cancel()
            await self._until_idle(_CUT_GRACE)
        log.info(
            "drained in %.1fs (process %d): %d request%s waited for, %d finished, %d cut at "
            "drain_timeout",
            time.monotonic() - started,
            os.getpid(),
            self._waited,
            "" if self._waited == 1 else "s",
            self._waited - cut,
            cut,
        )

    async def _until_idle(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


@contextlib.contextmanager
def drain_on_signals(drain: Drain) -> Iterator[None]:
    """While serving, SIGTERM and SIGINT start ``drain``; when it is done the signal goes on to
    the handler it replaced (uvicorn's), which shuts the server down. A second SIGINT while
    draining stops at once; a second SIGTERM (a worker's parent passing a Ctrl+C on) is ignored.

    Entered in the lifespan, on the main thread, inside uvicorn's own signal handling."""
    loop = asyncio.get_running_loop()
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) or signal.SIG_DFL for sig in stop_signals}
    running: asyncio.Task[None] | None = None
    handed_over = False

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def hand_over(sig: int) -> None:
        # Once: a second SIGINT would make uvicorn skip the lifespan's closing (the flush).
        nonlocal handed_over
        if not handed_over:
            handed_over = True
            restore()
            signal.raise_signal(sig)

    async def drain_then_stop(sig: int) -> None:
        await drain.run(signal.Signals(sig).name)
        hand_over(sig)

    def signalled(sig: int) -> None:
        nonlocal running
        if running is None:
            running = loop.create_task(drain_then_stop(sig), name="nobusy-drain")
        elif sig == signal.SIGINT:
            hand_over(sig)

    def handler(sig: int, frame: FrameType | None) -> None:
        # A signal handler may run between any two bytecodes of the loop: only schedule.
        loop.call_soon_threadsafe(signalled, sig)

    for sig in stop_signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        restore()
        if running is not None and not running.done():
            running.cancel()  # stopped another way (a second SIGINT): the drain is moot
