"""A private redis-server for tests: its own port and folder, nothing saved, stopped after.

Debian's ``redis-server`` is installed by ``scripts/install-redis.sh`` (``make pytest`` runs it
first); where it is missing the tests that need it skip, saying so.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer"]


class RedisServer:
    """One redis-server process on 127.0.0.1; ``stop`` and ``start`` keep its port."""

    def __init__(self, folder: Path, port: int, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is missing: run `bash scripts/install-redis.sh` (as root)")
        self.binary, self.folder, self.port, self.extra = binary, folder, port, extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        args += ["no", "--dir", str(self.folder), *self.extra]
        with (self.folder / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen([self.binary, *args], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_text = (self.folder / "redis.log").read_text()
                raise RuntimeError(f"redis-server exited:\n{log_text}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
