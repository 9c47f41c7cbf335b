"""``Blobs``: the bytes of uploaded files, one private file each under ``data_dir/files/``.

A file is written to a temporary name beside its place and renamed into it once complete and
flushed, so a crash never leaves half a file under a file id; temporary files a crash left
behind (an hour old) are removed at the next start. The records (name, owner, size, hash) are the
``KnowledgeStore``'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from pathlib import Path
from typing import BinaryIO

from nobusy.store.sqlite import private_dir

__all__ = ["Blobs"]

_ID = re.compile(r"file-[0-9a-f]{24}")
_CHUNK = 1024 * 1024


class Blobs:
    """Uploaded files' bytes in ``root`` (``data_dir/files``), 0600 in a 0700 directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        private_dir(root)
        # Another worker process may be writing one now: only parts an hour old are stale.
        for part in root.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - part.stat().st_mtime > 3600:
                    part.unlink()

    def path(self, file_id: str) -> Path:
        if not _ID.fullmatch(file_id):  # ids come from requests: never a path of their own
            raise ValueError(f"not a file id: {file_id!r}")
        return self.root / file_id

    def write(self, file_id: str, source: BinaryIO) -> tuple[int, str]:
        """Copy ``source`` to the file's place; its size and SHA-256."""
        target = self.path(file_id)
        part = target.with_name(target.name + ".part")
        digest, size = hashlib.sha256(), 0
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                while block := source.read(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    def read(self, file_id: str) -> bytes:
        return self.path(file_id).read_bytes()

    def delete(self, file_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(file_id).unlink()
