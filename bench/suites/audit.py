"""Audit log: appends/s with the keyed chain and SM4-GCM on and off, verification rows/s.

All in one process on a temporary data dir: the same ``AuditLog`` queue, writer thread and
SQLite batches, once as shipped (``store: full`` and ``store: hash``, both suites) and once with
the hashing and encryption taken out (``plain``), so the ratios are the cost of the crypto.
``python -c 'from bench.suites.audit import run; print(run(quick=True))'`` runs it alone.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.suites.base import Context, Goal, Result, Suite, at_least, fmt, md_table
from nobusy.crypto import SuiteName, load_suite
from nobusy.store.audit import AuditLog, Store, _Pending

__all__ = ["SUITE", "run"]

# Two rows per request (request, response) at nobusy's ~1,650 non-streamed requests/s
# (bench/tried.md) is ~3,300 rows/s: the log must keep up with that with room to spare.
GOAL_ROWS_PER_S = 5_000
# (label, suite, store, chained): each chained mode is compared with the plain one of its store.
MODES: list[tuple[str, SuiteName, Store, bool]] = [
    ("plain, content as is (no chain, no encryption)", "gm", "full", False),
    ("plain, no content (no chain)", "gm", "hash", False),
    ("gm, store: full (SM3 chain + SM4-GCM)", "gm", "full", True),
    ("gm, store: hash (SM3 chain)", "gm", "hash", True),
    ("standard, store: full (SHA-256 chain + AES-256-GCM)", "standard", "full", True),
    ("standard, store: hash (SHA-256 chain)", "standard", "hash", True),
]


class _Plain(AuditLog):
    """The shipped log with its crypto taken out: content stored as it is (or not), no hashes."""

    def _seal(self, row_id: int, p: _Pending) -> tuple[Any, ...]:
        when = datetime.fromtimestamp(p.ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        content = p.payload if self.store == "full" else None
        return (row_id, when, p.request_id, p.key_id, p.alias, p.upstream, p.event, content,
                None)  # fmt: skip

    def _row_hash(self, prev: str, row: tuple[Any, ...]) -> str:
        return prev


def _body(i: int) -> dict[str, Any]:
    """A chat request of about 1 KB, as an audited request would carry."""
    text = "请用三句话解释什么是零信任网络架构，并举一个银行内网的例子。" * 6
    return {
        "model": "deepseek-chat",
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": f"{i}: {text}"},
        ],
        "temperature": 0.7,
        "stream": True,
    }


def _one(root: Path, suite_name: SuiteName, store: Store, chained: bool, n: int) -> Result:
    data = Path(tempfile.mkdtemp(dir=root))
    suite = load_suite(suite_name, data, {})
    bodies = [_body(i) for i in range(n)]
    log = (AuditLog if chained else _Plain)(data, suite, store)
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        log.append("request", f"req-{i}", body, key_id="k1", alias="chat", upstream="ds")
    queued = time.perf_counter()
    log.flush(timeout=120)
    done = time.perf_counter()
    row: Result = {
        "rows": n,
        "appends_per_s": n / (done - start),
        "append_us": (queued - start) / n * 1e6,
        "dropped": log.dropped,
        "failed": log.failed,
        "db_mb": sum(p.stat().st_size for p in data.glob("audit.db*")) / 1e6,
    }
    if chained:
        t = time.perf_counter()
        result = log.verify()
        row["verify_rows_per_s"] = result.rows_checked / (time.perf_counter() - t)
        row["verify_ok"] = result.ok
        out = data / "export.jsonl"
        t = time.perf_counter()
        log.write_export(out, datetime(2000, 1, 1, tzinfo=UTC), decrypt=store == "full")
        row["export_rows_per_s"] = n / (time.perf_counter() - t)
        t = time.perf_counter()
        suite.sign(out.read_bytes())
        row["sign_export_ms"] = (time.perf_counter() - t) * 1e3
        row["export_mb"] = out.stat().st_size / 1e6
    log.close()
    return row


def run(quick: bool) -> dict[str, Any]:
    """Every mode once per round, rounds interleaved so drift hits all alike; medians."""
    n, rounds = (5_000, 1) if quick else (20_000, 3)
    runs: dict[str, list[Result]] = {name: [] for name, *_ in MODES}
    with tempfile.TemporaryDirectory(prefix="nobusy-bench-audit-") as root:
        _one(Path(root), "gm", "full", True, 1_000)  # warm-up: imports, first allocations
        for _ in range(rounds):
            for name, suite_name, store, chained in MODES:
                runs[name].append(_one(Path(root), suite_name, store, chained, n))
    results = []
    for name, suite_name, store, chained in MODES:
        row: Result = {"mode": name, "suite": suite_name, "store": store, "chained": chained}
        for key in runs[name][0]:
            values = [r[key] for r in runs[name]]
            row[key] = all(values) if key == "verify_ok" else statistics.median(values)
        results.append(row)
    plain = {r["store"]: r["appends_per_s"] for r in results if not r["chained"]}
    for row in results:
        row["vs_plain"] = row["appends_per_s"] / plain[row["store"]]
    return {"quick": quick, "rows_per_round": n, "rounds": rounds, "modes": results}


def goals(result: Result) -> list[Goal]:
    modes = result["modes"]
    full = next(r for r in modes if r["chained"] and r["suite"] == "gm" and r["store"] == "full")
    return [
        at_least(
            "audit appends/s with the SM3 chain and SM4-GCM",
            full["appends_per_s"],
            GOAL_ROWS_PER_S,
            " rows/s",
        )
    ]


def render(result: Result, img: Path) -> str:
    body = [
        [
            r["mode"],
            fmt(r["appends_per_s"], 0),
            f"{r['vs_plain']:.2f}× of plain {r['store']}" if r["chained"] else "1.00×",
            fmt(r["append_us"], 1),
            fmt(r.get("verify_rows_per_s"), 0),
            fmt(r.get("sign_export_ms"), 1),
            str(r["dropped"]),
        ]
        for r in result["modes"]
    ]
    headers = ["mode", "appends/s", "vs plain", "µs per append() call", "verify rows/s",
               "sign export (ms)", "dropped"]  # fmt: skip
    intro = (
        f"{result['rows_per_round']:,} rows of a ~1 KB chat request per round "
        f"(median of {result['rounds']}), appended from one thread as fast as it can; "
        "appends/s is until the writer thread has committed the last row."
    )
    return "\n\n".join([intro, md_table(headers, body)])


def _run(ctx: Context) -> Result:
    return run(ctx.settings.quick)


SUITE = Suite(
    name="audit",
    title="Audit log: the cost of the chain and SM4-GCM",
    run=_run,
    render=render,
    goals=goals,
)
