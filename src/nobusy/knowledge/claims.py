"""Claims on files in progress: which ingestion worker holds a file, and when a claim is void.

With ``--workers N`` every process runs ingestion workers over the same ``nobusy.db``. A worker
takes a file only by claiming it (a compare-and-set on ``kb_store_files.claimed_by``), so a file
is ingested by one worker, and a restart finds the files still ``in_progress`` once. A claim
holds while its worker renews it; it is void when its lease ran out (a worker that hangs, or
one on another host) or at once when the process that made it is gone from this host (a kill,
a crash), so a restart resumes without waiting for the lease.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

__all__ = ["LEASE_SECONDS", "Claim", "process_alive", "worker_id"]

# A claim not renewed for this long is void; workers renew theirs every LEASE_SECONDS / 6.
LEASE_SECONDS = 30.0


def worker_id() -> str:
    """This process's name in claims: ``host:pid:random`` (random: two Ingestors of one process
    are two workers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


@dataclass(frozen=True, slots=True)
class Claim:
    """Who holds a file in progress (``by`` None: nobody) and when they last said so."""

    by: str | None
    at: float | None

    def void(self, me: str, now: float, lease: float = LEASE_SECONDS) -> bool:
        """Whether ``me`` may take the file: unclaimed, claimed by ``me``, a lease run out, or
        a claim made by a process of this host that no longer runs."""
        if self.by is None or self.by == me:
            return True
        if self.at is None or now - self.at > lease:
            return True
        host, _, rest = self.by.partition(":")
        pid = rest.partition(":")[0]
        if host == me.partition(":")[0] and pid.isascii() and pid.isdigit():
            return not process_alive(int(pid))
        return False
