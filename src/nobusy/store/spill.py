"""Rows PostgreSQL could not take, kept in order in a local file until it takes them again.

A writer thread hands each batch to ``Spill.write``. While PostgreSQL answers and nothing is
spilled, the batch goes straight to it. When it fails, the batch is appended to
``data_dir/spill/<what>-<pid>.jsonl`` (one JSON array per row, 0600) and a replay thread tries
every ``retry_interval`` to write the file's rows, oldest first, in batches; until the file is
empty, later batches go behind it, so the order holds. The replay has a connection of its
own and holds the writer's lock only to read and cut the file: a PostgreSQL that does not
answer (a connect timeout) stalls the replay, never the writer. A batch whose commit was lost
with the connection may be replayed though it was stored: the rows carry unique ids and the
backends skip those already there, so nothing is stored twice. A file left by a process that died
(its pid is gone) is adopted at start and replayed first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from nobusy.admission.shared import process_alive
from nobusy.store.postgres import DOWN, ERRORS, Link, Liveness
from nobusy.store.sqlite import private_dir, private_file

__all__ = ["Spill"]

log = logging.getLogger("nobusy")

Row = Sequence[Any]
_CHUNK = 500


class Spill:
    """Write rows through ``write`` (one transaction per call), spilling to a file meanwhile."""

    def __init__(
        self,
        data_dir: Path,
        what: str,
        write: Callable[[Sequence[Row], Link], None],
        link: Link,
        liveness: Liveness,
        *,
        lock: threading.RLock | None = None,
        retry_interval: float = 1.0,
        encode: Callable[[Row], Row] = list,
        decode: Callable[[Row], Row] = list,
    ) -> None:
        self.what, self._write, self.liveness = what, write, liveness
        self._link, self._url = link, link.url
        # Replays on a connection of their own, outside the lock: a PostgreSQL that does not
        # answer holds the replay (up to the connect timeout), never the writer.
        self._replay_link = Link(link.url)
        self._replaying = threading.Lock()
        # A row as JSON can hold, and back (the audit log encrypts its content there).
        self._encode, self._decode = encode, decode
        self._lock = lock or threading.RLock()
        self._interval = retry_interval
        folder = data_dir / "spill"
        private_dir(folder)
        self.path = folder / f"{what}-{os.getpid()}.jsonl"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.spilled = self.replayed = self.lost = 0
        with self._lock:
            self._adopt(folder)
            if self._pending():
                self._kick()

    def write(self, batch: Sequence[Row]) -> None:
        """Store ``batch``: in PostgreSQL, or behind what is spilled already."""
        with self._lock:
            if not self._pending():
                try:
                    self._write_once_more(batch, self._link)
                except DOWN as exc:  # other errors: rows the table refuses, the caller's
                    self.liveness.down(exc, self._url, f"writing {self.what}")
                else:
                    self.liveness.up()
                    return
            self._append(batch)
            self._kick()

    def replay(self) -> bool:
        """Write what is spilled, oldest first; whether the file is empty now."""
        ok, empty = self._replay_once(hold=False)
        while ok and not empty:  # rows spilled meanwhile: go on at once
            ok, empty = self._replay_once(hold=self._small())
        return empty

    def _replay_once(self, hold: bool) -> tuple[bool, bool]:
        """One pass over the file: (PostgreSQL took every row, the file is empty now).

        Without ``hold`` the lock is taken only to read and to cut the file, so the writer
        goes on spilling meanwhile and a PostgreSQL that does not answer holds only this
        thread (on a connection of its own); with it (a last few rows) the writer waits, so
        the file surely empties and the writer goes back to PostgreSQL.
        """
        with self._replaying, self._lock if hold else contextlib.nullcontext():
            with self._lock:
                if not self._pending():
                    return True, True
                taken = self.path.read_bytes()
            lines = [line for line in taken.splitlines() if line]
            done, ok = 0, True
            for start in range(0, len(lines), _CHUNK):
                chunk = lines[start : start + _CHUNK]
                try:
                    rows = [self._decode(orjson.loads(line)) for line in chunk]
                    self._write_once_more(rows, self._replay_link)
                except DOWN as exc:
                    self.liveness.down(exc, self._url, f"replaying {self.what}")
                    ok = False
                    break
                except ERRORS:  # refused, not down: retrying would never end
                    self.lost += len(chunk)
                    log.exception(
                        "%s: %d spilled rows refused by PostgreSQL", self.what, len(chunk)
                    )
                else:
                    self.replayed += len(chunk)
                done += len(chunk)
            with self._lock:
                added = self.path.read_bytes()[len(taken) :]  # spilled while replaying
                left = b"".join(line + b"\n" for line in lines[done:]) + added
                if left:
                    self._rewrite(left)
                else:
                    self.path.unlink()
                    log.warning("%s: spilled rows all written to PostgreSQL", self.what)
        if ok:
            self.liveness.up()
        return ok, not left

    def _write_once_more(self, rows: Sequence[Row], link: Link) -> None:
        """``write``, again on a new connection if the one used before was found closed (a
        restarted PostgreSQL closes its connections, unseen until used)."""
        try:
            self._write(rows, link)
        except DOWN:
            if not link.reused:
                raise
            self._write(rows, link)

    def _small(self) -> bool:
        try:
            return self.path.stat().st_size < 256 * 1024
        except FileNotFoundError:
            return True

    def close(self) -> None:
        """Stop retrying (one last replay first); what is left stays for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if not self.replay():
            log.error("%s: rows left in %s, replayed at the next start", self.what, self.path)
        self._replay_link.close()

    def _pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def _append(self, batch: Sequence[Row]) -> None:
        if not self._pending():
            private_file(self.path)
            log.error("%s: PostgreSQL does not take rows, spilling to %s", self.what, self.path)
        with self.path.open("ab") as f:
            f.write(b"".join(orjson.dumps(self._encode(row)) + b"\n" for row in batch))
        self.spilled += len(batch)

    def _rewrite(self, data: bytes) -> None:
        temporary = self.path.with_suffix(".tmp")
        private_file(temporary)
        temporary.write_bytes(data)
        temporary.replace(self.path)

    def _kick(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name=f"nobusy-{self.what}-replay", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self.replay():
                return

    def _adopt(self, folder: Path) -> None:
        """Put the rows of spill files whose process is gone in front of this one's."""
        for orphan in sorted(folder.glob(f"{self.what}-*.jsonl")):
            pid = orphan.stem.rpartition("-")[2]
            if (
                orphan == self.path
                or not (pid.isascii() and pid.isdigit())
                or process_alive(int(pid))
            ):
                continue
            claimed = orphan.with_name(f"{orphan.name}.{os.getpid()}")
            try:
                orphan.rename(claimed)  # atomic: of two processes adopting, one wins
            except FileNotFoundError:
                continue
            mine = self.path.read_bytes() if self._pending() else b""
            private_file(self.path)
            self.path.write_bytes(claimed.read_bytes() + mine)
            claimed.unlink()
            log.warning("%s: adopted spilled rows of a stopped process: %s", self.what, orphan)
