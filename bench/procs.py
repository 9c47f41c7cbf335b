"""The processes under test: the fake upstream, nobusy, LiteLLM proxy; all on 127.0.0.1.

Every process is started in its own session (so a terminal's Ctrl-C reaches only the bench)
with a parent-death signal, and ``Processes.stop_all()`` ends each process group by its id at
exit, on Ctrl-C and on SIGTERM. Logs go to ``bench/.run/<name>.log``; when a process fails to
start, the tail of its log is printed.

LiteLLM gets its own virtualenv, ``bench/.litellm-venv``, made on first use.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BENCH_DIR",
    "HOST",
    "LITELLM_VERSION",
    "REPO",
    "LiteLLMInstall",
    "Proc",
    "Processes",
    "StartError",
    "cpu_seconds",
    "ensure_litellm",
    "free_port",
    "http_call",
    "http_json",
    "litellm_ready",
    "process_tree",
    "rss_bytes",
]

HOST = "127.0.0.1"  # the only address anything here binds or connects to
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RUN_DIR = BENCH_DIR / ".run"
NOBUSY = REPO / ".venv" / "bin" / "nobusy"
LITELLM_VERSION = "1.106.2"
LITELLM_VENV = BENCH_DIR / ".litellm-venv"
_LITELLM_STAMP = LITELLM_VENV / ".bench-installed"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PR_SET_PDEATHSIG = 1

Log = Callable[[str], None]


class StartError(RuntimeError):
    """A process did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- /proc readings ------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    return raw.rpartition(")")[2].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its living descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (utime + stime)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / _CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    """Resident set size of these processes, summed."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    return total


# --- processes -----------------------------------------------------------------------------


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)  # loaded here, not in a child
except OSError:
    _LIBC = None


def _die_with_parent() -> None:
    # Runs in the child before exec: if the bench is killed outright, the child gets SIGTERM.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Proc:
    """A started server."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    headers: dict[str, str] = field(default_factory=dict)
    health: str | None = "/healthz"  # what ``Processes.ready`` polls (None: the TCP port)...
    ready_timeout: float = 60.0  # ...for at most this long after the start
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None


class Processes:
    """Starts servers and is the one place that stops them."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.procs: list[Proc] = []
        RUN_DIR.mkdir(exist_ok=True)
        self.run_dir = RUN_DIR

    def start(
        self,
        name: str,
        argv: list[str],
        port: int,
        health: str | None,
        timeout: float = 60.0,
        env: dict[str, str | None] | None = None,
        headers: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Proc:
        """Start a server and wait until GET ``health`` answers 200 (``health=None``: until its
        port accepts a connection, for servers that do not speak HTTP); ``None`` in env unsets.
        With ``wait=False`` return at once: ``ready(proc)`` waits later, so a slow starter
        can come up while something else runs (in this thread: a child started from another
        thread would get its parent-death signal when that thread ends)."""
        log_path = self.run_dir / f"{name}.log"
        environ = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environ,
                cwd=self.run_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        proc = Proc(name, popen, port, log_path, headers or {}, health, timeout)
        self.procs.append(proc)
        return self.ready(proc) if wait else proc

    def ready(self, proc: Proc) -> Proc:
        """Wait until the server's health check answers 200 (StartError if it never does)."""
        name, port, log_path = proc.name, proc.port, proc.log_path
        while True:
            if not proc.alive():
                self.stop(proc)
                raise StartError(
                    f"{name} exited with {proc.popen.returncode} while starting; "
                    f"log {log_path}:\n{proc.log_tail()}"
                )
            if (
                proc.health is None
                and _tcp_ok(port)
                or (proc.health is not None and _http_ok(port, proc.health, proc.headers))
            ):
                break
            if time.monotonic() - proc.started_at > proc.ready_timeout:
                self.stop(proc)
                raise StartError(
                    f"{name} not healthy after {proc.ready_timeout:.0f}s; "
                    f"log {log_path}:\n{proc.log_tail()}"
                )
            time.sleep(0.2)
        since = _since(proc.started_at)
        self.log(f"  started {name} (pid {proc.pid}) on {HOST}:{port} in {since}")
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        if proc in self.procs:
            self.procs.remove(proc)
        if proc.popen.poll() is not None:
            return
        pgid = proc.pid  # start_new_session made the child its own group leader
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.popen.wait(5)
        # Workers of a server could outlive it only if they left its group; take them too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)

    @contextlib.contextmanager
    def running(self, proc: Proc) -> Iterator[Proc]:
        try:
            yield proc
        finally:
            self.stop(proc)

    # --- the three kinds of server ---------------------------------------------------------

    def fake_upstream(
        self,
        tokens: int,
        name: str = "fake",
        extra: list[str] | None = None,
        wait: bool = True,
    ) -> Proc:
        """The fake upstream in mode ``ok``; ``extra`` adds flags (``--capacity 4``...);
        ``wait=False``: see ``start``."""
        port = free_port()
        argv = [str(NOBUSY), "fake-upstream", "--host", HOST, "--port", str(port)]
        argv += ["--mode", "ok", "--tokens", str(tokens), *(extra or [])]
        return self.start(name, argv, port, "/healthz", timeout=30, wait=wait)

    def nobusy(
        self,
        name: str,
        upstream_port: int | None,
        workers: int = 1,
        timeout: float = 60.0,
        config: str | None = None,
        wait: bool = True,
    ) -> Proc:
        """nobusy in front of the fake (``upstream_port``), or serving the embedded model;
        ``config`` (YAML text) replaces the one-fake configuration; ``wait=False``: see
        ``start``."""
        port = free_port()
        data = self.run_dir / f"{name}-data"
        shutil.rmtree(data, ignore_errors=True)
        argv = [str(NOBUSY), "serve", "--host", HOST, "--port", str(port)]
        argv += ["--log-level", "warning", "--data-dir", str(data)]
        if config is not None or upstream_port is not None:
            path = self.run_dir / f"{name}.yaml"
            path.write_text(config if config is not None else nobusy_config(upstream_port or 0))
            argv += ["--config", str(path)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        # Only these flags count: NOBUSY_* settings from the shell (a NOBUSY_CONFIG, say) do not.
        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("NOBUSY_")}
        # BENCH_NOBUSY_SRC=/path/to/old/src serves another checkout's nobusy with the same
        # harness, for a same-machine baseline (see bench/README.md).
        if os.environ.get("BENCH_NOBUSY_SRC"):
            env["PYTHONPATH"] = os.environ["BENCH_NOBUSY_SRC"]
        return self.start(name, argv, port, "/readyz", timeout=timeout, env=env, wait=wait)

    def litellm(
        self,
        install: LiteLLMInstall,
        upstream_port: int,
        key: str,
        config: str | None = None,
        name: str = "litellm",
        wait: bool = True,
    ) -> Proc:
        """LiteLLM proxy, one worker, no database, ``key`` as its master key; ``config``
        (YAML text) replaces the one-fake configuration; ``wait=False``: see ``start``."""
        assert install.executable is not None
        port = free_port()
        path = self.run_dir / f"{name}.yaml"
        path.write_text(config if config is not None else litellm_config(upstream_port))
        argv = [str(install.executable), "--config", str(path), "--host", HOST]
        argv += ["--port", str(port), "--num_workers", "1"]
        env: dict[str, str | None] = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_MASTER_KEY": key,
            # The same log level as nobusy's --log-level warning: no access log line per request.
            "LITELLM_LOG": "WARNING",
            "DATABASE_URL": None,
        }
        headers = {"Authorization": f"Bearer {key}"}
        return self.start(
            name,
            argv,
            port,
            "/health/liveliness",
            timeout=180,
            env=env,
            headers=headers,
            wait=wait,
        )


def nobusy_config(upstream_port: int) -> str:
    return (
        "upstreams:\n"
        f'  fake: {{kind: openai, base_url: "http://{HOST}:{upstream_port}/v1", '
        "default_model: ok, max_connections: 512}\n"
        "models:\n"
        "  fake-model: [fake/ok]\n"
    )


def litellm_config(upstream_port: int) -> str:
    return (
        "model_list:\n"
        "  - model_name: fake-model\n"
        "    litellm_params:\n"
        "      model: openai/fake-model\n"
        f'      api_base: "http://{HOST}:{upstream_port}/v1"\n'
        "      api_key: x\n"
    )


def _since(started: float) -> str:
    return f"{time.monotonic() - started:.1f}s"


def _http_ok(port: int, path: str, headers: dict[str, str]) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _tcp_ok(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def http_call(
    port: int, method: str, path: str, body: object = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """One request with the standard library (``body`` sent as JSON when given)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_json(
    port: int, body: dict[str, object], headers: dict[str, str], timeout: float = 30.0
) -> tuple[int, bytes]:
    """One POST /v1/chat/completions with the standard library: status and raw body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(body),
            headers={"Content-Type": "application/json", **headers},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- LiteLLM's virtualenv --------------------------------------------------------------------


@dataclass(frozen=True)
class LiteLLMInstall:
    """LiteLLM proxy ready to run, or why it is not."""

    executable: Path | None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.executable is not None


def litellm_ready() -> bool:
    """Whether ``bench/.litellm-venv`` already holds this LiteLLM version."""
    executable = LITELLM_VENV / "bin" / "litellm"
    stamp = _LITELLM_STAMP.read_text().strip() if _LITELLM_STAMP.exists() else ""
    return executable.exists() and stamp == LITELLM_VERSION


def ensure_litellm(log: Log) -> LiteLLMInstall:
    """``bench/.litellm-venv`` with ``litellm[proxy]==LITELLM_VERSION``, made if missing."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if litellm_ready():
        log(f"  LiteLLM {LITELLM_VERSION}: using {LITELLM_VENV.relative_to(REPO)}")
        return LiteLLMInstall(executable)
    started = time.monotonic()
    log(f"  LiteLLM {LITELLM_VERSION}: installing into {LITELLM_VENV.relative_to(REPO)}")
    python = LITELLM_VENV / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--progress-bar",
            "off",
            f"litellm[proxy]=={LITELLM_VERSION}",
        ],
    ]
    for argv in steps:
        code, tail = _run_with_progress(argv, log, started)
        if code != 0:
            reason = f"`{' '.join(argv[2:])}` exited with {code}:\n{tail}"
            log(f"  LiteLLM install FAILED ({_since(started)}); going on without it")
            return LiteLLMInstall(None, reason, time.monotonic() - started)
    if not executable.exists():
        return LiteLLMInstall(None, f"{executable} missing after install")
    _LITELLM_STAMP.write_text(LITELLM_VERSION + "\n")
    log(f"  LiteLLM installed in {_since(started)}")
    return LiteLLMInstall(executable, seconds=time.monotonic() - started)


def _run_with_progress(argv: list[str], log: Log, started: float) -> tuple[int, str]:
    """Run a command, echoing pip's main steps and a heartbeat; return its code and tail."""
    tail: list[str] = []
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(20):
            log(f"    ... still installing LiteLLM ({_since(started)})")

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        with subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        ) as popen:
            assert popen.stdout is not None
            for line in popen.stdout:
                line = line.rstrip()
                short = line if len(line) <= 300 else line[:300] + " ..."
                tail = (tail + [short])[-30:]
                if line.startswith(("Collecting litellm", "Installing", "Successfully", "ERROR")):
                    log(f"    pip: {line[:160]}")
            code = popen.wait()
    finally:
        done.set()
    return code, "\n".join(tail)
