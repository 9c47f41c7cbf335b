"""Memory: nobusy's resident set before and after 100,000 streamed requests."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from bench import plots, procs
from bench.loadgen import LoadSpec, chat_body, run_load
from bench.suites.base import Context, Goal, Result, Suite, at_most, fmt, md_table, summarise

CONCURRENCY = 32
REQUESTS = 100_000
QUICK_REQUESTS = 5_000
LIMIT_MB = 20.0
_MB = 1024 * 1024


def run(ctx: Context) -> Result:
    requests = QUICK_REQUESTS if ctx.settings.quick else REQUESTS
    warmup = max(requests // 50, 500)
    fake = ctx.procs.fake_upstream(ctx.settings.tokens)
    nobusy = ctx.procs.nobusy("nobusy-memory", fake.port)
    body = json.dumps(chat_body("fake-model", True)).encode()
    spec = LoadSpec(nobusy.port, body, True, ctx.headers)

    ctx.log(f"[memory] warm-up: {warmup:,} streamed requests at concurrency {CONCURRENCY}")
    run_load(spec, CONCURRENCY, requests=warmup)
    time.sleep(1)
    before = procs.rss_bytes(nobusy.tree())
    ctx.log(f"[memory] RSS before: {before / _MB:.1f} MB; now {requests:,} streamed requests")

    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic() - started, procs.rss_bytes([nobusy.pid]) / _MB))
            if len(samples) % 10 == 0:
                ctx.log(f"[memory] {samples[-1][0]:5.0f}s  RSS {samples[-1][1]:.1f} MB")
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run_load(spec, CONCURRENCY, requests=requests, drain_timeout=900)
    finally:
        stop.set()
        sampler.join()
    time.sleep(1)
    after = procs.rss_bytes(nobusy.tree())
    samples.append((time.monotonic() - started, after / _MB))
    row = summarise(result, {})
    growth = (after - before) / _MB
    ctx.log(
        f"[memory] RSS after: {after / _MB:.1f} MB (growth {growth:+.1f} MB) over "
        f"{result.completed:,} requests at {result.rps:,.0f} req/s, {result.errors} errors"
    )
    return {
        "requests": requests,
        "concurrency": CONCURRENCY,
        "warmup_requests": warmup,
        "rss_before_mb": before / _MB,
        "rss_after_mb": after / _MB,
        "growth_mb": growth,
        "peak_mb": max(s[1] for s in samples),
        "samples": samples,
        "load": row,
    }


def goals(result: Result) -> list[Goal]:
    n = result["requests"]
    name = f"RSS growth over {n:,} streamed requests"
    if n < REQUESTS:
        name += f" (quick run; the target is over {REQUESTS:,})"
    return [at_most(name, result["growth_mb"], LIMIT_MB, "MB")]


def render(result: Result, img: Path) -> str:
    load = result["load"]
    body = [
        ["requests (streamed, concurrency 32)", f"{result['requests']:,}"],
        ["warm-up requests before the first reading", f"{result['warmup_requests']:,}"],
        ["RSS before", fmt(result["rss_before_mb"], 1, " MB")],
        ["RSS after", fmt(result["rss_after_mb"], 1, " MB")],
        ["growth", fmt(result["growth_mb"], 1, " MB")],
        ["peak during the run", fmt(result["peak_mb"], 1, " MB")],
        ["throughput", fmt(load["rps"], 0, " req/s")],
        ["errors", str(load["errors"])],
    ]
    xs = [s[0] for s in result["samples"]]
    ys = [s[1] for s in result["samples"]]
    plots.series(
        xs, ys, "seconds", "RSS (MB)", "nobusy RSS during the streamed run", img / "bench-rss.png"
    )
    intro = (
        "A fresh nobusy (one worker) takes a warm-up, then its RSS (from /proc/PID/statm) is "
        "read before and one second after the streamed requests."
    )
    return "\n\n".join(
        [intro, md_table(["", "value"], body), "![RSS over the run](img/bench-rss.png)"]
    )


SUITE = Suite(
    name="memory",
    title="Memory over 100,000 streamed requests",
    run=run,
    render=render,
    goals=goals,
)
