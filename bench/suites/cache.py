"""Cache: what a hit costs, and whether kept answers are served when every upstream is down.

Added latency of a hit (non-streaming and streaming, one client): the same request straight
to the fake upstream (answering at once), through nobusy to the fake (its own path), and
through nobusy answered from the cache (`x-nobusy-cache: use`, one request repeated, so every
measured request is a hit). Then the all-down scenario: N distinct requests are kept (half
asked as streams), every upstream is stopped, and each is asked again, as a whole answer and
as a stream; a kept request must get its answer (stale), one never kept must get the 503.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

from bench import procs
from bench.loadgen import LoadSpec, chat_body, percentile, run_load
from bench.suites.base import (
    Context,
    Goal,
    Result,
    Suite,
    aggregate,
    at_most,
    find,
    fmt,
    md_table,
    summarise,
)

PATHS = ["direct", "nobusy", "nobusy hit"]
CACHED = 200  # requests kept before the upstreams stop
TTL = 1.0

CONFIG = """upstreams:
  fake: {{kind: openai, base_url: "http://{host}:{port}/v1", default_model: ok,
          max_connections: 512, first_token_timeout: 2}}
models:
  fake-model: [fake/ok]
  cached-model: {{routes: [fake/ok], cache: {{enabled: true, ttl: {ttl}, stale_if_error: 3600}}}}
"""


def _spec(ctx: Context, port: int, model: str, stream: bool, hit: bool) -> LoadSpec:
    headers = dict(ctx.headers)
    if hit:
        headers["x-nobusy-cache"] = "use"
    return LoadSpec(port, json.dumps(chat_body(model, stream)).encode(), stream, headers)


def _latency(ctx: Context, fake: procs.Proc, nobusy: procs.Proc) -> list[Result]:
    """Rounds over the three paths, one client, streaming and not (each round visits every
    path in turn, so drift of the machine hits them alike)."""
    s = ctx.settings
    paths = [
        ("direct", fake.port, "fake-model", False, None),
        ("nobusy", nobusy.port, "fake-model", False, nobusy),
        ("nobusy hit", nobusy.port, "cached-model", True, nobusy),
    ]
    for stream in (False, True):  # keep the answer the hits will replay
        procs.http_call(nobusy.port, "GET", "/healthz")
        conn = http.client.HTTPConnection(procs.HOST, nobusy.port, timeout=10)
        spec = _spec(ctx, nobusy.port, "cached-model", stream, True)
        conn.request("POST", spec.path, body=spec.body, headers=spec.headers)
        conn.getresponse().read()
        conn.close()
    runs: list[Result] = []
    for stream in (False, True):
        for number in range(1, s.rounds + 1):
            for name, port, model, hit, gateway in paths:
                trees = {"gateway": gateway.tree()} if gateway is not None else {}
                trees["upstream"] = fake.tree()
                cpu: dict[str, float] = {}

                def start(trees: dict[str, list[int]] = trees, cpu: dict[str, float] = cpu) -> None:
                    for role, pids in trees.items():
                        cpu[role] = -procs.cpu_seconds(pids)

                def end(trees: dict[str, list[int]] = trees, cpu: dict[str, float] = cpu) -> None:
                    for role, pids in trees.items():
                        cpu[role] += procs.cpu_seconds(pids)

                result = run_load(
                    _spec(ctx, port, model, stream, hit),
                    1,
                    duration=s.duration,
                    warmup=s.warmup,
                    min_round_trips=s.min_round_trips,
                    max_window=s.max_window,
                    on_start=start,
                    on_end=end,
                    keep_records=True,
                )
                row = summarise(result, cpu)
                ok = sorted(r.latency for r in result.records if r.status == 200)
                row["p95_ms"] = percentile(ok, 95) * 1000 if ok else None
                lat = row["latency_ms"] or {}
                mode = "stream" if stream else "non-stream"
                ctx.log(
                    f"[cache] {mode} round {number}/{s.rounds} {name:<11} p50 "
                    f"{lat.get('p50', float('nan')):.3f} ms p99 {lat.get('p99', float('nan')):.3f}"
                    f" ms errors {row['errors']}"
                )
                runs.append(
                    row | {"path": name, "stream": stream, "concurrency": 1, "round": number}
                )
    return runs


def _ask(port: int, ctx: Context, prompt: str, stream: bool) -> tuple[int, str, bytes]:
    """One cacheable request: status, x-nobusy-cache, body."""
    body = chat_body("cached-model", stream, prompt, temperature=0)
    conn = http.client.HTTPConnection(procs.HOST, port, timeout=30)
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=json.dumps(body),
            headers={"Content-Type": "application/json", **ctx.headers},
        )  # fmt: skip
        response = conn.getresponse()
        return response.status, response.getheader("x-nobusy-cache") or "", response.read()
    finally:
        conn.close()


def _complete(status: int, body: bytes, stream: bool) -> bool:
    """A whole, well-formed answer: a completion with content, or a stream ending in [DONE]
    with no error event."""
    if status != 200:
        return False
    if not stream:
        try:
            return bool(json.loads(body)["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError):
            return False
    text = body.decode()
    return text.rstrip().endswith("data: [DONE]") and '"error"' not in text


def _all_down(ctx: Context) -> Result:
    """Keep CACHED answers, stop the upstream, ask them all again (whole and streamed)."""
    fake = ctx.procs.fake_upstream(ctx.settings.tokens, name="fake-down")
    config = CONFIG.format(host=procs.HOST, port=fake.port, ttl=TTL)
    nobusy = ctx.procs.nobusy("nobusy-cache-down", None, config=config)
    prompts = [f"question number {i}" for i in range(CACHED)]
    kept_errors = 0
    for i, prompt in enumerate(prompts):
        status, _, body = _ask(nobusy.port, ctx, prompt, stream=i % 2 == 1)
        kept_errors += not _complete(status, body, i % 2 == 1)
    ctx.procs.stop(fake)
    time.sleep(TTL + 0.2)  # past the ttl: what follows can only be stale answers
    replay: dict[str, Result] = {}
    for stream in (False, True):
        errors, stale, times = 0, 0, []
        for prompt in prompts:
            started = time.perf_counter()
            status, marked, body = _ask(nobusy.port, ctx, prompt, stream)
            times.append((time.perf_counter() - started) * 1000)
            errors += not _complete(status, body, stream)
            stale += marked == "stale"
        times.sort()
        replay["stream" if stream else "non-stream"] = {
            "requests": len(prompts), "errors": errors, "stale": stale,
            "p50_ms": times[len(times) // 2], "p95_ms": times[int(len(times) * 0.95)],
        }  # fmt: skip
    never = [_ask(nobusy.port, ctx, f"never asked {i}", False)[0] for i in range(20)]
    ctx.procs.stop(nobusy)
    return {
        "cached": CACHED,
        "keeping_errors": kept_errors,
        "replay": replay,
        "uncached_statuses": {str(code): never.count(code) for code in sorted(set(never))},
    }


def run(ctx: Context) -> Result:
    fake = ctx.procs.fake_upstream(ctx.settings.tokens)
    config = CONFIG.format(host=procs.HOST, port=fake.port, ttl=3600)
    nobusy = ctx.procs.nobusy("nobusy-cache", None, config=config)
    runs = _latency(ctx, fake, nobusy)
    ctx.procs.stop(nobusy)
    ctx.procs.stop(fake)
    return {"paths": PATHS, "runs": runs, "all_down": _all_down(ctx)}


def rows(result: Result) -> list[Result]:
    return aggregate(result["runs"], baseline="direct", reference=None)


def _p95(result: Result, path: str, stream: bool) -> float | None:
    values = sorted(
        r["p95_ms"]
        for r in result["runs"]
        if r["path"] == path and r["stream"] == stream and r.get("p95_ms") is not None
    )
    return values[len(values) // 2] if values else None


def goals(result: Result) -> list[Goal]:
    hit = find(rows(result), stream=False, path="nobusy hit") or {}
    down = result["all_down"]["replay"]
    errors = sum(int(part["errors"]) for part in down.values())
    return [
        at_most("Cache hit: added latency p50, non-streaming", hit.get("added_p50_ms"), 1, "ms"),
        at_most("Every upstream down: errors for cached requests", float(errors), 0, "errors"),
    ]


def render(result: Result, img: Path) -> str:
    table = rows(result)
    headers = ["mode", "path", "p50 ms", "p95 ms", "p99 ms", "added p50 ms", "CPU s / 1k req"]
    body = [
        [
            "streaming" if r["stream"] else "non-streaming",
            r["path"],
            fmt(r["p50_ms"], 3),
            fmt(_p95(result, r["path"], r["stream"]), 3),
            fmt(r["p99_ms"], 3),
            fmt(r["added_p50_ms"], 3) if r["path"] != "direct" else "—",
            fmt(r["gateway_cpu_per_1k"]),
        ]
        for r in table
    ]
    down = result["all_down"]
    down_rows = [
        [mode, str(part["requests"]), str(part["stale"]), str(part["errors"]),
         fmt(part["p50_ms"], 2), fmt(part["p95_ms"], 2)]
        for mode, part in down["replay"].items()
    ]  # fmt: skip
    intro = (
        "One client, one request at a time. **direct**: the fake upstream, answering at once; "
        "**nobusy**: the same request through nobusy to it; **nobusy hit**: through nobusy, "
        "answered from the response cache (`x-nobusy-cache: use`, the request kept before the "
        "window, so every measured request is a hit). *added p50* is over direct, round by "
        "round; a hit skips the upstream, so it can cost less than nobusy's own path."
    )
    hit = find(table, stream=False, path="nobusy hit") or {}
    path = find(table, stream=False, path="nobusy") or {}
    if hit.get("gateway_cpu_per_1k") and path.get("gateway_cpu_per_1k"):
        share = hit["gateway_cpu_per_1k"] / path["gateway_cpu_per_1k"]
        intro += (
            f" A non-streaming hit costs nobusy {share:.0%} of the CPU of its own path to the "
            "upstream: on a loaded machine the latencies grow with waiting for a core, and this "
            "ratio is the steadier figure."
        )
    statuses = ", ".join(f"{n}× {code}" for code, n in down["uncached_statuses"].items())
    down_intro = (
        f"Every upstream down: {down['cached']} distinct requests (`temperature: 0`, half of "
        f"them streamed) kept with `ttl: {TTL:g}` and `stale_if_error: 3600`, "
        f"{down['keeping_errors']} errors while keeping them; then the fake upstream is "
        "stopped, the ttl passes, and each request is asked again, whole and as a stream. "
        f"Requests never kept, asked meanwhile: {statuses}."
    )
    down_table = md_table(
        ["replayed", "requests", "stale answers", "errors", "p50 ms", "p95 ms"], down_rows
    )
    return "\n\n".join([intro, md_table(headers, body), down_intro, down_table])


SUITE = Suite(
    name="cache",
    title="Response cache: a hit's cost, and answers with every upstream down",
    run=run,
    render=render,
    goals=goals,
)
