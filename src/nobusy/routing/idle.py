"""The mid-answer idle deadline: at most ``idle_timeout`` of waiting for the upstream between
tokens, with one timer per attempt instead of one per chunk.

``asyncio.timeout`` around every read made and cancelled a timer handle per chunk, about 7% of
the CPU of relaying a 12-chunk answer. One timer is enough because the deadline never moves
earlier: only waiting spends the budget, and only a token refills it. The timer re-arms itself
at the current deadline when it fires early, does nothing while the client is being served
(the generator is suspended at a ``yield``: that time is not the upstream's), and cancels the
reading task only during a wait that is past its deadline, the way ``asyncio.timeout`` does.
"""

from __future__ import annotations

import asyncio

__all__ = ["IdleTimer"]


class IdleTimer:
    """Call ``wait`` before each read, ``got`` after it; ``timed_out`` on a CancelledError."""

    __slots__ = (
        "_cancelling",
        "_deadline",
        "_handle",
        "_idle",
        "_left",
        "_loop",
        "_since",
        "_task",
        "_waiting",
        "expired",
    )

    def __init__(self, idle: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = self._left = idle
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._since = self._deadline = 0.0
        self._waiting = False
        self._cancelling = 0
        self.expired = False

    def wait(self) -> None:
        """A read of the upstream starts now."""
        now = self._loop.time()
        self._since, self._deadline, self._waiting = now, now + self._left, True
        if self._handle is None:
            self._task = asyncio.current_task()
            assert self._task is not None
            self._cancelling = self._task.cancelling()
            self._handle = self._loop.call_at(self._deadline, self._fire)

    def got(self, token: bool) -> None:
        """The read returned a chunk; ``token``: it carried one, which refills the budget."""
        self._waiting = False
        self._left = self._idle if token else self._left - (self._loop.time() - self._since)

    def timed_out(self) -> bool:
        """After a CancelledError during a read: was it this deadline's? (Then the
        cancellation is taken back, unless the task was also cancelled from elsewhere.)"""
        if not self.expired or self._task is None:
            return False
        return self._task.uncancel() <= self._cancelling

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        if not self._waiting:
            return  # the client is being served; the next wait re-arms
        if self._loop.time() < self._deadline:
            self._handle = self._loop.call_at(self._deadline, self._fire)
            return
        self.expired = True
        assert self._task is not None
        self._task.cancel()
