"""The fleet the ``replicas`` suite measures: fake upstreams, one redis-server, three
``nobusy serve`` replicas on it and Debian's nginx in front, all on 127.0.0.1.

Every server is started through ``ctx.procs`` (so the bench stops it at the end, on Ctrl-C and
on SIGTERM); nginx and Redis run with a private configuration, pid file and logs under
``bench/.run/replicas/``. What the code under test offers is found out from the served nobusy
itself (``Features``): a scenario whose setting is missing says "not available on this build".

Keys are made once, with ``nobusy keys create``: in PostgreSQL when the build has ``store``
(every replica then reads the same rows), else in the first replica's SQLite, copied to the
others' data dirs before they start, as a shared key store would hold them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import procs
from bench.loadgen import LoadSpec, chat_body
from bench.suites.admission import FAKE_FLAGS
from bench.suites.admission_report import CHUNK_DELAY, SLOTS, TOKENS
from bench.suites.base import Context

__all__ = [
    "Features",
    "Fleet",
    "Monitor",
    "features",
    "nginx_binary",
    "request_spec",
    "served_env",
]

REPLICAS = 3
UPSTREAM_SLOTS = 4  # the `narrow` upstream's max_concurrency: the ceiling the fleet must hold
LONG_TOKENS, LONG_DELAY = 20, 0.1  # `long` answers: 20 chunks 0.1 s apart, a 2 s stream
DRAIN_TIMEOUT = 30.0
PG_DATABASE = "nobusy_bench"
# Sent by every client: nginx retries a draining replica's 503 or a dead one's refusal on the
# next replica. `non_idempotent`: without it nginx never retries a POST once it reached a
# replica, so a draining replica's 503 would reach the client.
NEXT_UPSTREAM = "error timeout http_502 http_503 non_idempotent"
_SERVED_PYTHON = procs.NOBUSY.parent / "python"


@dataclass(frozen=True)
class Features:
    """What the nobusy under test offers, read from it (not from the harness's checkout)."""

    store: bool  # `store: postgresql://...` (durable data in PostgreSQL)
    upstream_tpm: str | None  # the upstream setting for tokens per minute, if there is one
    postgres: str | None = None  # why PostgreSQL cannot run here, when `store` exists


def served_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOBUSY_")}
    if os.environ.get("BENCH_NOBUSY_SRC"):
        env["PYTHONPATH"] = os.environ["BENCH_NOBUSY_SRC"]
    return env


def features() -> Features:
    """Ask the served nobusy's settings: a ``store`` field (it may have no flag: a URL with a
    password is set in the file or the environment only), and a tokens-per-minute field among
    the upstream settings."""
    probe = (
        "from nobusy.settings import Settings as S\n"
        "from nobusy.upstreams.base import UpstreamSettings as U\n"
        "names = [n for n in U.model_fields if 'tpm' in n or 'tokens_per_minute' in n]\n"
        "print('store' in S.model_fields, names[0] if names else '')\n"
    )
    done = subprocess.run(
        [str(_SERVED_PYTHON), "-c", probe],
        capture_output=True,
        text=True,
        env=served_env(),
        check=True,
        cwd=procs.RUN_DIR,  # not the checkout: PYTHONPATH alone says which nobusy is served
    )
    store, _, field = done.stdout.strip().partition(" ")
    return Features(store=store == "True", upstream_tpm=field or None)


def request_spec(port: int, secret: str, model: str, stream: bool, **extra: Any) -> LoadSpec:
    """A chat request for the load generator, with this key."""
    body = json.dumps(chat_body(model, stream, "Hello", **extra)).encode()
    return LoadSpec(port, body, stream, {"Authorization": f"Bearer {secret}"})


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


class Fleet:
    """The processes of one run of the suite, and what can be done to them."""

    def __init__(self, ctx: Context, feats: Features) -> None:
        self.ctx, self.features = ctx, feats
        self.dir = ctx.procs.run_dir / "replicas"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        p = ctx.procs
        narrow = ["--chunk-delay", str(CHUNK_DELAY)]
        long = ["--chunk-delay", str(LONG_DELAY)]
        self.fakes = {
            "fast": p.fake_upstream(ctx.settings.tokens, name="rep-fake-fast", wait=False),
            "narrow": p.fake_upstream(TOKENS, name="rep-fake-narrow", extra=narrow, wait=False),
            "slots": p.fake_upstream(TOKENS, name="rep-fake-slots", extra=FAKE_FLAGS, wait=False),
            "long": p.fake_upstream(LONG_TOKENS, name="rep-fake-long", extra=long, wait=False),
        }
        self.redis_port = procs.free_port()
        self.redis: procs.Proc | None = None
        self.start_redis()
        for fake in self.fakes.values():
            p.ready(fake)
        self.pg: Any = None
        self.pg_dir: Path | None = None
        self.store_url: str | None = None
        if feats.store and feats.postgres is None:
            self._start_postgres()
        # Three replicas and, last, one more on local state (the cost of sharing).
        self.ports = [procs.free_port() for _ in range(REPLICAS + 1)]
        self.procs: list[procs.Proc | None] = [None] * (REPLICAS + 1)
        self.shared = True
        self.lbs: list[procs.Proc] = []

    # --- Redis and PostgreSQL -------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return f"redis://{procs.HOST}:{self.redis_port}/0"

    def start_redis(self) -> None:
        """redis-server on its port (the same one after a stop), nothing saved."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: run `bash scripts/install-redis.sh`")
        argv = [binary, "--port", str(self.redis_port), "--bind", procs.HOST, "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.dir)]
        self.redis = self.ctx.procs.start("rep-redis", argv, self.redis_port, None, timeout=15)

    def stop_redis(self) -> None:
        if self.redis is not None:
            self.ctx.procs.stop(self.redis)
            self.redis = None

    def monitor(self, split: dict[str, int] | None = None) -> Monitor:
        return Monitor(self.redis_port, split)

    def _start_postgres(self) -> None:
        try:
            from tests.postgres_server import PostgresServer

            # Under /tmp, as in the tests: as root the helper opens up every parent folder to
            # PostgreSQL's own user.
            self.pg_dir = Path(tempfile.mkdtemp(prefix="nobusy-bench-pg-"))
            self.pg = PostgresServer(self.pg_dir, procs.free_port()).start()
            self.store_url = self.pg.new_database(PG_DATABASE)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # pytest's skip is a BaseException: the reason is wanted
            self.features = Features(
                self.features.store, self.features.upstream_tpm, f"{type(exc).__name__}: {exc}"
            )
            self.ctx.log(f"[replicas] PostgreSQL did not start: {self.features.postgres}")

    def stop_postgres(self) -> None:
        if self.pg is not None:
            self.pg.stop()

    def start_postgres_again(self) -> None:
        if self.pg is not None:
            self.pg.start()

    def close(self) -> None:
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.stop()
            self.pg = None
        if self.pg_dir is not None:
            shutil.rmtree(self.pg_dir, ignore_errors=True)

    # --- keys -----------------------------------------------------------------------------

    def config(self, index: int) -> str:
        def url(name: str) -> str:
            return f"http://{procs.HOST}:{self.fakes[name].port}/v1"

        narrow = f"max_concurrency: {UPSTREAM_SLOTS}"
        lines = [
            f"replica_id: r{index + 1}",
            f"drain_timeout: {DRAIN_TIMEOUT:g}",
            "upstreams:",
            f'  fast: {{kind: openai, base_url: "{url("fast")}", default_model: ok, '
            "max_connections: 512}",
            f'  narrow: {{kind: openai, base_url: "{url("narrow")}", default_model: ok, {narrow}}}',
            f'  slots: {{kind: openai, base_url: "{url("slots")}", default_model: ok, '
            f"max_concurrency: {SLOTS}}}",
            f'  long: {{kind: openai, base_url: "{url("long")}", default_model: ok}}',
            "models:",
            "  fast: [fast/ok]",
            "  narrow: [narrow/ok]",
            "  chat: [slots/ok]",
            "  long: [long/ok]",
            # Requests that hold a slot for 5 s (the fake waits before its first byte).
            "  hold: [fast/ok:delay=5]",
            "  narrow-hold: [narrow/ok:delay=5]",
        ]
        if self.features.upstream_tpm:  # the fast fake again, under a token ceiling of its own
            ceiling = f"{self.features.upstream_tpm}: {self.upstream_tpm}"
            lines.insert(
                lines.index("models:"),
                f'  metered: {{kind: openai, base_url: "{url("fast")}", '
                f"default_model: ok, {ceiling}}}",
            )
            lines.append("  metered: [metered/ok]")
        if self.shared and index < REPLICAS:  # index REPLICAS: the one on local state
            lines.insert(0, f"state: {self.redis_url}")
        if self.store_url:
            lines.insert(0, f"store: {self.store_url}")
        return "\n".join(lines) + "\n"

    upstream_tpm = 0  # set by the suite before the replicas start, when the setting exists

    def data_dir(self, index: int) -> Path:
        return self.dir / f"r{index + 1}-data"

    def _config_path(self, index: int) -> Path:
        path = self.dir / f"r{index + 1}.yaml"
        path.write_text(self.config(index))
        return path

    def make_keys(self, keys: dict[str, list[str]]) -> dict[str, str]:
        """``nobusy keys create --name NAME ARGS...`` for each; the secrets by name."""
        secrets: dict[str, str] = {}
        first = self.data_dir(0)
        for name, args in keys.items():
            argv = [str(procs.NOBUSY), "keys", "create", "--name", name, *args]
            argv += ["--data-dir", str(first), "--config", str(self._config_path(0))]
            done = subprocess.run(argv, capture_output=True, text=True, env=served_env())
            if done.returncode and self.store_url is not None:
                # The store refused (a migration missing for PostgreSQL, say): the other
                # scenarios run on SQLite, the PostgreSQL one says why it did not.
                why = f"`keys create` against PostgreSQL failed: {done.stderr.strip()[-300:]}"
                self.ctx.log(f"[replicas] {why}; going on with SQLite")
                self.features = replace(self.features, postgres=why)
                self.store_url = None
                self.close()
                return self.make_keys(keys)
            if done.returncode:
                raise RuntimeError(f"keys create {name}: {done.stderr.strip()[-500:]}")
            secrets[name] = done.stdout.strip().splitlines()[-1]
        if self.store_url is None:
            from nobusy.store.migrations import DB_NAME

            for index in range(1, REPLICAS + 1):
                self.data_dir(index).mkdir(exist_ok=True)
                target = self.data_dir(index) / DB_NAME
                target.unlink(missing_ok=True)
                with (
                    closing(sqlite3.connect(first / DB_NAME)) as source,
                    closing(sqlite3.connect(target)) as copy,
                ):
                    source.backup(copy)
        return secrets

    # --- replicas -------------------------------------------------------------------------

    def start(self, index: int, wait: bool = True) -> procs.Proc:
        """Replica ``index`` on its own port and data dir (the same ones after a restart)."""
        port = self.ports[index]
        argv = [str(procs.NOBUSY), "serve", "--host", procs.HOST, "--port", str(port)]
        argv += ["--log-level", "warning", "--data-dir", str(self.data_dir(index))]
        argv += ["--config", str(self._config_path(index))]
        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("NOBUSY_")}
        if os.environ.get("BENCH_NOBUSY_SRC"):
            env["PYTHONPATH"] = os.environ["BENCH_NOBUSY_SRC"]
        proc = self.ctx.procs.start(
            f"rep-r{index + 1}", argv, port, "/readyz", timeout=60, env=env, wait=wait
        )
        self.procs[index] = proc
        return proc

    def start_all(self, shared: bool) -> None:
        self.shared = shared
        started = [self.start(i, wait=False) for i in range(REPLICAS)]
        for proc in started:
            self.ctx.procs.ready(proc)

    def stop_all(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc is not None:
                self.ctx.procs.stop(proc, timeout=DRAIN_TIMEOUT + 5)
                self.procs[index] = None

    def replica(self, index: int) -> procs.Proc:
        proc = self.procs[index]
        assert proc is not None, f"replica r{index + 1} is not running"
        return proc

    # --- the load balancer ----------------------------------------------------------------

    def start_lb(
        self,
        name: str,
        replicas: list[int],
        ports: list[int] | None = None,
        health: str = "/healthz",
    ) -> procs.Proc:
        """nginx on a free port in front of these replicas (or of the servers on ``ports``),
        as deploy/nginx.conf has it."""
        backends = ports if ports is not None else [self.ports[i] for i in replicas]
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is missing: run `bash scripts/install-lb.sh` (as root)")
        prefix = self.dir / name
        prefix.mkdir(exist_ok=True)
        port = procs.free_port()
        servers = "\n".join(f"        server {procs.HOST}:{p} max_fails=0;" for p in backends)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temp = "\n".join(
            f"    {kind}_temp_path {prefix}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (prefix / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log warn;\nworker_rlimit_nofile 20000;\n"
            "events { worker_connections 8192; }\n"
            "http {\n    access_log off;\n"
            f"{temp}\n"
            f"    upstream nobusy {{\n{servers}\n        keepalive 64;\n    }}\n"
            f"    server {{\n        listen {procs.HOST}:{port};\n"
            "        client_max_body_size 10m;\n"
            "        location / {\n"
            "            proxy_pass http://nobusy;\n"
            "            proxy_http_version 1.1;\n"
            '            proxy_set_header Connection "";\n'
            "            proxy_set_header Host $host;\n"
            f"            proxy_next_upstream {NEXT_UPSTREAM};\n"
            f"            proxy_next_upstream_tries {len(backends)};\n"
            "            proxy_buffering off;\n"
            "            proxy_read_timeout 300s;\n"
            "        }\n    }\n}\n"
        )
        argv = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
        argv += ["-e", str(prefix / "error.log")]
        proc = self.ctx.procs.start(f"rep-{name}", argv, port, health, timeout=20)
        self.lbs.append(proc)
        return proc

    # --- usage rows -----------------------------------------------------------------------

    def usage_ids(self) -> set[str]:
        """Request ids in the usage table: PostgreSQL's, or every replica's SQLite."""
        if self.store_url is not None:
            query = "SELECT request_id FROM usage"
            return {str(row[0]) for row in self.pg.execute(query, database=PG_DATABASE)}
        from nobusy.store.migrations import DB_NAME

        found: set[str] = set()
        for index in range(REPLICAS):
            path = self.data_dir(index) / DB_NAME
            with closing(sqlite3.connect(path, timeout=30)) as db:
                found |= {row[0] for row in db.execute("SELECT request_id FROM usage")}
        return found


class Monitor:
    """Redis's MONITOR on a socket of its own, read by a thread: each command a client sent
    (one round trip at most: a pipeline sends several in one) and each command a script ran
    (``[0 lua]``), by name; and each ``EVALSHA`` by its script's SHA1 (and, for the scripts in
    ``split``, by the value of one of its arguments: ``{sha: ARGV index}``, 1-based as in Lua).
    ``INFO commandstats`` cannot tell a client's command from a script's."""

    def __init__(self, port: int, split: dict[str, int] | None = None) -> None:
        self.split = split or {}
        self.sock = socket.create_connection((procs.HOST, port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        self.sock.settimeout(0.2)
        self.sent: Counter[str] = Counter()
        self.scripted: Counter[str] = Counter()
        self.scripts: Counter[tuple[str, str]] = Counter()  # (sha, the split argument or "")
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, name="redis-monitor", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffer = b""
        while not self.done.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            *lines, buffer = (buffer + data).split(b"\r\n")
            with self.lock:
                for line in lines:
                    self._count(line)

    def _count(self, line: bytes) -> None:
        # +1702000000.123456 [0 127.0.0.1:54321] "evalsha" "<sha>" "3" "k1" ... / [0 lua] "zadd"
        source, _, rest = line.partition(b'] "')
        if not rest:
            return
        name = rest.split(b'"', 1)[0].decode(errors="replace").lower()
        if source.endswith(b" lua"):
            self.scripted[name] += 1
            return
        self.sent[name] += 1
        if name == "evalsha":
            args = [a.decode(errors="replace") for a in _QUOTED.findall(b'"' + rest)]
            sha = args[1].lower() if len(args) > 1 else ""
            flag = ""
            if sha in self.split and len(args) > 2 and args[2].isdigit():
                at = 2 + int(args[2]) + self.split[sha]  # evalsha, sha, numkeys, KEYS, ARGV
                flag = args[at] if at < len(args) else ""
            self.scripts[(sha, flag)] += 1

    def counts(self) -> tuple[Counter[str], Counter[str], Counter[tuple[str, str]]]:
        """What clients sent, what scripts ran and which scripts were called, so far."""
        with self.lock:
            return Counter(self.sent), Counter(self.scripted), Counter(self.scripts)

    def close(self) -> None:
        self.done.set()
        self.thread.join(2)
        self.sock.close()


_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')  # MONITOR's quoted arguments, escapes kept
