"""CPU-heavy work on large request bodies, run off the event loop by a small pool of threads.

Parsing, guarding and masking a 10 MB body takes a second or more of pure Python; on the
event loop that second is a stall for every other request, ``/healthz`` included. Bodies of
at least ``threshold`` bytes are therefore handled on a worker thread, one at a time. The
pool is small on purpose: six large bodies at once queue for it instead of taking every
thread, and the GIL is shared with the loop by as few threads as possible.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["Offload"]

# Below this a body takes a few milliseconds at most; the hop to a thread would cost more.
THRESHOLD = 64 * 1024
# One: the work is mostly Python holding the GIL, so a second thread adds little throughput
# and doubles how long the event loop waits for the GIL (measured: loop lag p99 31 ms with
# one thread, 46 ms with two, three 9.5 MB bodies at once).
THREADS = 1

P = ParamSpec("P")
T = TypeVar("T")


class Offload:
    """Runs ``fn(*args)`` inline for small bodies, on a bounded thread pool for large ones."""

    def __init__(self, threshold: int = THRESHOLD, threads: int = THREADS) -> None:
        self.threshold = threshold
        # Threads start on first use: an app that never sees a large body never has one.
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="nobusy-cpu")

    async def run(self, size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn``'s result (or exception); off the loop when ``size`` is at least the
        threshold. A caller cancelled meanwhile leaves the call to finish on its thread."""
        if size < self.threshold:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
