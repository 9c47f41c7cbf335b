"""Money budgets under concurrency: overspend with holds against the copy-check baseline.

1. *Overspend*: ``nobusy serve --workers 2`` in front of the fake upstream (priced, each answer
   delayed 0.2 s so requests overlap); a fresh key with a budget that fits about ten answers;
   C client threads each send requests until refused (429 ``insufficient_quota``). Once every
   hold is settled, the spend (the sum of the usage rows' costs, which equals the key's
   ``spent_micros``) is compared with the budget, in units of one request's cost. Baseline, in
   the same run: ``pricing.holds: false`` (each worker checks its copy of the key, the cost is
   charged after the answer), as nobusy did before holds.
   The same with ``state:`` naming a redis-server, where the holds are decided in Redis.
2. *Added latency*: one client, non-streamed requests without delay, p50/p95 of a key without
   a budget (no hold, no round trip) against a key with one (a hold at the start, settled
   after the answer), without ``state`` (SQLite) and with it (Redis).

``python -m bench --only money`` runs it.
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx

from bench import procs
from bench.suites.base import Context, Goal, Result, Suite, at_most, fmt, md_table
from nobusy.store.migrations import DB_NAME

__all__ = ["SUITE", "run"]

ADMIN = "bench-money-admin-0123456789abcdef"
CLIENTS = (8, 32)
ANSWERS = 10.5  # the budget fits this many answers: the last one admitted overspends
MAX_TOKENS = 32  # above the fake's answer: the worst case held covers the real cost
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": MAX_TOKENS}


def _config(fake_port: int, holds: bool, delay: float, state: str | None = None) -> str:
    model = f"ok:delay={delay}" if delay else "ok"
    # refuse: a hold Redis does not answer for in time is a 503, never a request let through.
    shared = f'state: "{state}"\non_state_failure: refuse\n' if state else ""
    return f"""
{shared}admin_key: {ADMIN}
pricing: {{currency: CNY, holds: {str(holds).lower()}}}
upstreams:
  fake: {{kind: openai, base_url: "http://{procs.HOST}:{fake_port}/v1", default_model: "{model}",
          max_connections: 512, price: {{input: 2, output: 8}}}}
models:
  m: [fake]
"""


def _key(url: str, name: str, budget: str | None) -> tuple[str, str]:
    """A new key (with ``budget``, in CNY), made over the admin API: its id and secret."""
    body: dict[str, object] = {"name": name}
    if budget is not None:
        body["budget"] = budget
    made = httpx.post(
        f"{url}/v1/nobusy/keys", json=body, headers={"authorization": f"Bearer {ADMIN}"}
    )
    made.raise_for_status()
    return made.json()["id"], made.json()["secret"]


def _spend(data: Path, key_id: str) -> tuple[int, int, int, int]:
    """Rows' cost, answered rows, the dearest row, and the key's own spent_micros, once
    every hold is settled."""
    for _ in range(100):
        with closing(sqlite3.connect(data / DB_NAME)) as db:
            holds = db.execute("SELECT count(*) FROM money_holds").fetchone()[0]
            if holds == 0:
                total, answered, dearest = db.execute(
                    "SELECT COALESCE(SUM(report_cost_micros), 0), count(*), "
                    "COALESCE(MAX(report_cost_micros), 0) FROM usage "
                    "WHERE key_id = ? AND outcome = 'ok'",
                    (key_id,),
                ).fetchone()
                (spent,) = db.execute(
                    "SELECT spent_micros FROM keys WHERE id = ?", (key_id,)
                ).fetchone()
                return total, answered, dearest, spent
        time.sleep(0.1)
    raise RuntimeError(f"{holds} money holds never settled")


def _overspend_round(url: str, data: Path, clients: int, name: str, cost: int) -> Result:
    budget = int(ANSWERS * cost)
    key_id, secret = _key(url, name, f"{budget / 1_000_000:.6f}")
    refused = 0
    lock = threading.Lock()

    def client(_: int) -> None:
        nonlocal refused
        headers = {"authorization": f"Bearer {secret}"}
        with httpx.Client(timeout=60) as http:
            while True:
                answer = http.post(f"{url}/v1/chat/completions", json=BODY, headers=headers)
                if answer.status_code == 429:
                    with lock:
                        refused += 1
                    return
                if answer.status_code != 503:  # Redis did not answer in time: asked again
                    answer.raise_for_status()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    time.sleep(1.2)  # the workers' copies and the ledger's flush catch up (the baseline)
    total, answered, dearest, spent = _spend(data, key_id)
    return {
        "clients": clients,
        "budget": budget,
        "spent": total,
        "key_spent": spent,
        "answered": answered,
        "refused": refused,
        "cost": dearest,
        "overspend": max(0, total - budget),
        "overspend_requests": max(0, total - budget) / dearest if dearest else None,
    }


def _latency(url: str, secrets: dict[str, str], n: int) -> dict[str, Result]:
    """p50 and p95 per key, the keys' requests interleaved so that both see the same load."""
    times: dict[str, list[float]] = {label: [] for label in secrets}
    with httpx.Client(timeout=30) as http:
        for i in range(n + 20):
            for label, secret in secrets.items():
                headers = {"authorization": f"Bearer {secret}"}
                start = time.perf_counter()
                answer = http.post(f"{url}/v1/chat/completions", json=BODY, headers=headers)
                answer.raise_for_status()
                if i >= 20:  # warm-up: connections, first imports
                    times[label].append((time.perf_counter() - start) * 1000)
    out = {}
    for label, values in times.items():
        values.sort()
        p95 = values[int(0.95 * len(values)) - 1]
        out[label] = {"p50_ms": statistics.median(values), "p95_ms": p95}
    return out


def run(ctx: Context) -> Result:
    quick = ctx.settings.quick
    rounds = 1 if quick else 3
    fake = ctx.procs.fake_upstream(tokens=ctx.settings.tokens, name="money-fake")
    overspend: dict[str, list[Result]] = {"holds": [], "holds in Redis": [], "no holds": []}
    latency: dict[str, Result] = {}
    redis = _redis(ctx)
    state = f"redis://{procs.HOST}:{redis.port}/0"
    try:
        for mode, holds in (("holds", True), ("holds in Redis", True), ("no holds", False)):
            name = "money-" + mode.replace(" ", "-").lower()
            config = _config(fake.port, holds, 0.2, state if "Redis" in mode else None)
            proc = ctx.procs.nobusy(name, None, workers=2, config=config)
            url = f"http://{procs.HOST}:{proc.port}"
            data = ctx.procs.run_dir / f"{name}-data"
            try:
                probe_id, probe = _key(url, "probe", "1000")
                _latency(url, {"probe": probe}, 1)
                cost = _spend(data, probe_id)[2]  # one answer's cost
                for clients in CLIENTS:
                    for number in range(rounds):
                        row = _overspend_round(url, data, clients, f"k{clients}-{number}", cost)
                        ctx.log(f"[money] {mode}, {clients} clients: {row}")
                        overspend[mode].append(row)
            finally:
                ctx.procs.stop(proc)
        for where, shared in (("", None), (" in Redis", state)):
            config = _config(fake.port, True, 0, shared)
            proc = ctx.procs.nobusy("money-latency", None, workers=1, config=config)
            url = f"http://{procs.HOST}:{proc.port}"
            try:
                n = 200 if quick else 1000
                secrets = {
                    f"no budget{where}": _key(url, "free", None)[1],
                    f"budget (hold{where})": _key(url, "held", "1000000")[1],
                }
                found = _latency(url, secrets, n)
                ctx.log(f"[money] latency: {found}")
                latency |= found
            finally:
                ctx.procs.stop(proc)
    finally:
        ctx.procs.stop(fake)
        ctx.procs.stop(redis)
    return {"quick": quick, "rounds": rounds, "answers": ANSWERS, "overspend": overspend,
            "latency": latency}  # fmt: skip


def _redis(ctx: Context) -> procs.Proc:
    """A redis-server of its own, nothing saved (``scripts/install-redis.sh`` installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is missing: run `bash scripts/install-redis.sh`")
    port = procs.free_port()
    argv = [binary, "--port", str(port), "--bind", procs.HOST, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(ctx.procs.run_dir)]
    return ctx.procs.start("money-redis", argv, port, None, timeout=15)


def _worst(rows: list[Result]) -> float | None:
    values = [r["overspend_requests"] for r in rows if r["overspend_requests"] is not None]
    return max(values) if values else None


def goals(result: Result) -> list[Goal]:
    return [
        at_most(
            f"money budget overspend with --workers 2, any number of clients ({mode})",
            _worst(result["overspend"][mode]),
            1,
            "requests' cost",
        )
        for mode in ("holds", "holds in Redis")
        if mode in result["overspend"]
    ]


def render(result: Result, img: Path) -> str:
    body = []
    for mode, rows in result["overspend"].items():
        for clients in sorted({r["clients"] for r in rows}):
            mine = [r for r in rows if r["clients"] == clients]
            body.append(
                [
                    mode,
                    str(clients),
                    fmt(statistics.median(r["answered"] for r in mine), 0),
                    fmt(statistics.median(r["spent"] / r["budget"] for r in mine) * 100, 0, "%"),
                    fmt(max(r["overspend_requests"] or 0 for r in mine), 2),
                    "yes" if all(r["spent"] == r["key_spent"] for r in mine) else "no",
                ]
            )
    latency = result["latency"]
    lat_body = []
    for label, r in latency.items():
        base = latency["no budget" + (" in Redis" if "Redis" in label else "")]
        added = fmt(r["p50_ms"] - base["p50_ms"], 2)
        lat_body.append([label, fmt(r["p50_ms"], 2), fmt(r["p95_ms"], 2), added])
    intro = (
        "`nobusy serve --workers 2` in front of the fake upstream (each answer 0.2 s late), "
        f"one key whose budget fits {result['answers']:g} answers, client threads each sending "
        "until refused; the worst of "
        f"{result['rounds']} round(s). *Holds*: each request holds its worst-case cost "
        "(max_tokens at the route's price) in one conditional UPDATE of nobusy.db before its "
        "upstream call; *no holds* (`pricing.holds: false`): each worker checks its copy of the "
        "key and the cost is charged after the answer, as before; *holds in Redis*: `state:` "
        "names a Redis, which decides each hold in one Lua script (`on_state_failure: refuse`: "
        "a 503 when it does not answer in time, and the client asks again). *Rows = key*: the "
        "key's spend equals the sum of its usage rows' costs, to the micro-unit."
    )
    parts = [
        intro,
        md_table(
            [
                "budget check",
                "clients",
                "answered",
                "spent / budget",
                "overspend (requests)",
                "rows = key",
            ],  # fmt: skip
            body,
        ),
        "Added latency: one client, non-streamed answers with no delay, one worker, the two "
        "keys' requests interleaved (each against the key without a budget on the same server, "
        "with and without `state:`); a key without a budget takes no hold (no round trip).",
        md_table(["key", "p50 ms", "p95 ms", "p50 added ms"], lat_body),
    ]
    return "\n\n".join(parts)


SUITE = Suite(
    name="money",
    title="Money budgets: overspend across workers, with holds and without",
    run=run,
    render=render,
    goals=goals,
)
