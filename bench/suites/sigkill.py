"""Usage log under SIGKILL: answered requests missing after a kill, and rows/s vs JSON lines.

1. *SIGKILL during load*: nobusy in front of the fake upstream, 32 client threads sending
   chat requests (half streamed); once ``kill_after`` answers are in, the server gets SIGKILL
   with requests still in flight. Every request the client saw answered (status 200, whole
   body) must have its row in ``data_dir/nobusy.db``.
2. *Write throughput*: in one process, ``UsageLog`` (queue, writer thread, SQLite batches in
   WAL) against the JSON-lines file it replaced (one ``write`` + ``flush`` per record), the
   same records appended from one thread as fast as it can, until the last one is written.

``python -c 'from bench.suites.sigkill import run; print(run(quick=True))'`` runs it alone.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

import httpx
import orjson

from bench import procs
from bench.suites.base import Context, Goal, Result, Suite, at_least, at_most, fmt, md_table
from nobusy.store.migrations import DB_NAME
from nobusy.store.usage import UsageLog, UsageRecord

__all__ = ["SUITE", "run"]

# Two workers' worth of nobusy's ~1,650 non-streamed requests/s (bench/tried.md), with room.
GOAL_ROWS_PER_S = 5_000
CLIENTS = 32


class _JsonLines:
    """The log this replaced: one JSON line per record, flushed to the OS at once."""

    def __init__(self, data_dir: Path) -> None:
        self._file = (data_dir / "usage.jsonl").open("ab")

    def record(self, record: UsageRecord) -> None:
        self._file.write(orjson.dumps(asdict(record)) + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _record(i: int) -> UsageRecord:
    return UsageRecord(
        f"{i:024x}", "fake-model", stream=i % 2 == 0, upstream="fake", tried=["fake"],
        prompt_tokens=2, completion_tokens=20, ttft_ms=1.5, duration_ms=4.0,
        key_id="key_0123456789",
    )  # fmt: skip


def _throughput(root: Path, kind: str, n: int) -> Result:
    data = Path(tempfile.mkdtemp(dir=root))
    records = [_record(i) for i in range(n)]
    log = UsageLog(data) if kind == "sqlite" else _JsonLines(data)
    start = time.perf_counter()
    for record in records:
        log.record(record)
    queued = time.perf_counter()
    if isinstance(log, UsageLog):
        log.flush(timeout=120)
    done = time.perf_counter()
    log.close()
    row: Result = {"rows_per_s": n / (done - start), "record_us": (queued - start) / n * 1e6}
    if isinstance(log, UsageLog):
        row |= {"written": log.written, "dropped": log.dropped, "failed": log.failed}
    return row


def _kill_round(ctx: Context, fake_port: int, n: int, kill_after: int) -> Result:
    """One server, one load, one SIGKILL; what the client saw answered against the rows."""
    proc = ctx.procs.nobusy("sigkill-nobusy", fake_port)
    url = f"http://{procs.HOST}:{proc.port}/v1/chat/completions"
    answered: set[str] = set()
    lock = threading.Lock()
    killed_at: list[float] = []

    def one(i: int) -> None:
        body = {"model": "fake-model", "stream": i % 2 == 1,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        try:
            with client.stream("POST", url, json=body) as r:
                text = b"".join(r.iter_bytes())  # to the end of the (chunked) body
            whole = b"[DONE]" in text if body["stream"] else bool(orjson.loads(text)["choices"])
        except (httpx.HTTPError, orjson.JSONDecodeError, KeyError):
            return  # cut off by the kill
        if r.status_code == 200 and whole:
            with lock:
                answered.add(r.headers["x-request-id"])
                if len(answered) >= kill_after and not killed_at:
                    killed_at.append(time.monotonic())
                    proc.popen.kill()  # SIGKILL, while the other clients' requests are in flight

    started = time.monotonic()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    try:
        with httpx.Client(timeout=30, limits=limits) as client, ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(one, range(n)))
        proc.popen.wait(10)
    finally:
        ctx.procs.stop(proc)
    data = ctx.procs.run_dir / "sigkill-nobusy-data" / DB_NAME
    with closing(sqlite3.connect(data)) as db:
        logged = {row[0] for row in db.execute("SELECT request_id FROM usage")}
    seconds = (killed_at[0] if killed_at else time.monotonic()) - started
    return {
        "answered": len(answered),
        "logged": len(logged),
        "missing": len(answered - logged),
        "killed": bool(killed_at) and proc.popen.returncode == -9,
        "rps_before_kill": len(answered) / seconds if seconds else None,
    }


def run(quick: bool, ctx: Context | None = None) -> Result:
    """Kill rounds (when given a context to start servers with), then throughput rounds."""
    rounds = 1 if quick else 3
    n = 5_000 if quick else 20_000
    kills: list[Result] = []
    if ctx is not None:
        fake = ctx.procs.fake_upstream(tokens=ctx.settings.tokens, name="sigkill-fake")
        try:
            for number in range(1, (2 if quick else 5) + 1):
                kill = _kill_round(ctx, fake.port, n=1_000, kill_after=400)
                ctx.log(f"[sigkill] round {number}: {kill}")
                kills.append(kill)
        finally:
            ctx.procs.stop(fake)
    runs: dict[str, list[Result]] = {"sqlite": [], "jsonl": []}
    with tempfile.TemporaryDirectory(prefix="nobusy-bench-usage-") as root:
        _throughput(Path(root), "sqlite", 1_000)  # warm-up: imports, first allocations
        for _ in range(rounds):
            for kind in runs:
                runs[kind].append(_throughput(Path(root), kind, n))
    throughput = {
        kind: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for kind, rows in runs.items()
    }
    throughput["sqlite"]["vs_jsonl"] = (
        throughput["sqlite"]["rows_per_s"] / throughput["jsonl"]["rows_per_s"]
    )
    return {"quick": quick, "rows_per_round": n, "rounds": rounds, "kills": kills,
            "throughput": throughput}  # fmt: skip


def goals(result: Result) -> list[Goal]:
    kills = result["kills"]
    missing = sum(k["missing"] for k in kills) if kills else None
    return [
        at_most(
            "answered requests missing from the usage log after SIGKILL during load",
            missing,
            0,
            "requests",
            "run through `python -m bench`, which starts the servers",
        ),
        at_least(
            "usage log writes/s (SQLite, one writer thread)",
            result["throughput"]["sqlite"]["rows_per_s"],
            GOAL_ROWS_PER_S,
            " rows/s",
        ),
    ]


def render(result: Result, img: Path) -> str:
    parts = []
    if result["kills"]:
        body = [
            [
                str(i),
                str(k["answered"]),
                str(k["logged"]),
                str(k["missing"]),
                fmt(k["rps_before_kill"], 0),
            ]  # fmt: skip
            for i, k in enumerate(result["kills"], 1)
        ]
        parts.append(
            f"{CLIENTS} client threads, half the requests streamed; SIGKILL once 400 answers "
            "were in. *Logged* counts rows of requests answered, refused or cut off by the "
            "kill; *missing* is answered requests without a row."
        )
        parts.append(md_table(["round", "answered", "logged", "missing", "answered req/s"], body))
    t = result["throughput"]
    body = [
        ["SQLite (queue + writer thread, WAL)", fmt(t["sqlite"]["rows_per_s"], 0),
         f"{t['sqlite']['vs_jsonl']:.2f}×", fmt(t["sqlite"]["record_us"], 1),
         str(int(t["sqlite"]["dropped"]))],
        ["JSON lines (write + flush each)", fmt(t["jsonl"]["rows_per_s"], 0), "1.00×",
         fmt(t["jsonl"]["record_us"], 1), "0"],
    ]  # fmt: skip
    parts.append(
        f"{result['rows_per_round']:,} usage records per round (median of {result['rounds']}), "
        "recorded from one thread as fast as it can; rows/s is until the last row is written."
    )
    parts.append(
        md_table(["log", "rows/s", "vs JSON lines", "µs per record() call", "dropped"], body)
    )
    return "\n\n".join(parts)


def _run(ctx: Context) -> Result:
    return run(ctx.settings.quick, ctx)


SUITE = Suite(
    name="sigkill",
    title="Usage log: nothing answered lost to SIGKILL, and its write throughput",
    run=_run,
    render=render,
    goals=goals,
)
