"""One writer thread per log: callers queue items, the thread commits them in batches.

The usage log and the audit log both write this way, so the event loop never waits for SQLite:
``put`` queues an item (waiting ``block_timeout`` at most when the queue is full), the thread
takes whatever is queued, up to ``batch_size`` items, and hands the batch to ``write``, one
transaction per batch. ``linger`` lets a batch wait that long for more items (fewer, larger
commits); 0 commits as soon as the thread is free, so batches grow only under load.
``flush`` waits for everything queued before it; ``close`` writes what is queued and stops.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BatchWriter"]

log = logging.getLogger("nobusy")

T = TypeVar("T")

_STOP = object()


class BatchWriter(Generic[T]):
    """A queue of ``T`` drained by one daemon thread named ``name`` into ``write(batch)``.

    ``write`` handles its own errors (retrying, counting what it lost); an exception escaping
    it is logged and the batch counted in ``lost``, so the thread outlives any one bad batch.
    The thread starts with the first ``put`` (or ``start``): opening a log only to read it
    starts none.
    """

    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], None],
        *,
        queue_size: int,
        batch_size: int,
        linger: float = 0.0,
    ) -> None:
        self.name = name
        self._write = write
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        self._batch_size, self._linger = batch_size, linger
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.closed = False
        self.lost = 0  # items in batches whose write raised

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self.closed:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def put(self, item: T, timeout: float) -> bool:
        """Queue ``item``, waiting ``timeout`` at most for room; False if full or closed."""
        if self._thread is None:
            self.start()
        if self.closed:
            return False
        try:
            self._queue.put(item, timeout=timeout)
        except queue.Full:
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every item queued so far is written (or given up); False on timeout."""
        if self._thread is None or self.closed:
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> list[T]:
        """Write what is queued, stop the thread; the items queued too late to be written."""
        with self._lock:
            if self.closed:
                return []
            self.closed = True
            thread = self._thread
        if thread is not None:
            # Room is made within timeout as long as ``write`` gives up by then.
            self._queue.put(_STOP, timeout=None if timeout is None else timeout + 1)
            thread.join(None if timeout is None else timeout + 1)
        late: list[T] = []
        while not self._queue.empty():  # queued while closing, after the stop
            item = self._queue.get_nowait()
            if item is not _STOP and not isinstance(item, threading.Event):
                late.append(item)  # type: ignore[arg-type]  # only put() queues anything else
        return late

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch: list[T] = []
            waiters: list[threading.Event] = []
            deadline = time.monotonic() + self._linger
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    batch.append(item)  # type: ignore[arg-type]
                # A waiter ends the batch: flush() returns as soon as its items are written.
                if stop or waiters or len(batch) >= self._batch_size:
                    break
                try:
                    if self._linger:
                        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    else:
                        item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write_safely(batch)
            for waiter in waiters:
                waiter.set()

    def _write_safely(self, batch: list[T]) -> None:
        try:
            self._write(batch)
        # The thread must outlive any one bad batch, or every later put would block.
        except Exception:
            self.lost += len(batch)
            log.exception("%s: %d items could not be written", self.name, len(batch))
