"""Upstream ceilings shared by the worker processes of one host.

With ``--workers N`` every process adapts its own limit and keeps its own queue, but an
upstream's ``max_concurrency`` is one number for them all. Splitting it N ways would leave a
worker idle while another queues (an HTTP client keeps its connections, so its requests can
all land on one worker); instead the processes count their slots in one small memory-mapped
file in ``NOBUSY_DATA_DIR``, under an ``flock``. A process takes a slot only while the sum
over all processes is below the ceiling, so the ceiling holds exactly and every worker can
use all of it.

Layout: ``_CELLS`` cells, one per process, each ``[pid, held on upstream 0, 1, ...]`` as
64-bit integers. A process claims a free cell (or one whose process is gone) at start and
zeroes it at exit; cells of processes that died are swept when a ceiling looks reached, so a
crashed worker cannot hold slots for ever. Redis will be another implementation of the same
three methods for several hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from nobusy.store.sqlite import private_dir

__all__ = ["SharedSlots", "process_alive"]

_CELLS = 64  # worker processes per host that can share one file
_WORD = 8
_SWEEP_EVERY = 1.0  # seconds between sweeps for dead processes' cells


class SharedSlots:
    """Slots held on each upstream by every process on this host, with ceilings."""

    def __init__(self, data_dir: Path, ceilings: Mapping[str, int]) -> None:
        self.ceilings = dict(ceilings)
        self.names = sorted(ceilings)
        self.index = {name: i + 1 for i, name in enumerate(self.names)}
        self.width = 1 + len(self.names)
        # One file per set of upstreams: processes of another configuration never share it.
        digest = hashlib.sha256("\n".join(self.names).encode()).hexdigest()[:12]
        self.path = data_dir / f"slots-{digest}.bin"
        private_dir(data_dir)
        size = _CELLS * self.width * _WORD
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked():
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)
        self._cells = memoryview(self._map).cast("q")
        self.pid = os.getpid()
        self._swept = 0.0
        with self._locked():
            self._sweep()
            self.cell = self._claim()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _claim(self) -> int:
        cells = self._cells
        for cell in range(_CELLS):
            base = cell * self.width
            if cells[base] in (0, self.pid):
                for i in range(self.width):
                    cells[base + i] = 0
                cells[base] = self.pid
                return cell
        raise RuntimeError(f"more than {_CELLS} processes share {self.path}")

    def _sweep(self) -> None:
        """Free the cells of processes that are gone (a worker killed with its slots)."""
        cells = self._cells
        for cell in range(_CELLS):
            base = cell * self.width
            pid = cells[base]
            if pid and pid != self.pid and not process_alive(pid):
                for i in range(self.width):
                    cells[base + i] = 0
        self._swept = time.monotonic()

    def take(self, upstream: str) -> bool:
        """One more slot on ``upstream`` for this process, if all of them hold fewer than the
        ceiling."""
        column = self.index[upstream]
        cells, width = self._cells, self.width
        with self._locked():
            total = sum(cells[column + c * width] for c in range(_CELLS))
            if total >= self.ceilings[upstream] and time.monotonic() - self._swept > _SWEEP_EVERY:
                self._sweep()
                total = sum(cells[column + c * width] for c in range(_CELLS))
            if total >= self.ceilings[upstream]:
                return False
            cells[self.cell * width + column] += 1
            return True

    def give_back(self, upstream: str) -> None:
        column = self.index[upstream]
        at = self.cell * self.width + column
        with self._locked():
            self._cells[at] = max(0, self._cells[at] - 1)

    def held(self, upstream: str) -> int:
        """Slots on ``upstream`` held by every process together (for the status views)."""
        column = self.index[upstream]
        return sum(self._cells[column + c * self.width] for c in range(_CELLS))

    def close(self) -> None:
        """Free this process's cell and unmap the file."""
        with self._locked():
            base = self.cell * self.width
            for i in range(self.width):
                self._cells[base + i] = 0
        self._cells.release()
        self._map.close()
        os.close(self._fd)


def process_alive(pid: int) -> bool:
    """Is process ``pid`` still running (on this host)? State a dead worker left is ignored."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
