"""Scale: nobusy with one worker process against two, in front of the same fake upstream."""

from __future__ import annotations

from pathlib import Path

from bench import plots
from bench.suites.base import (
    Context,
    Endpoint,
    Goal,
    Result,
    Suite,
    aggregate,
    fmt,
    md_table,
    run_rounds,
)

CONCURRENCIES = (32, 128)


def run(ctx: Context) -> Result:
    fake = ctx.procs.fake_upstream(ctx.settings.tokens)
    endpoints = []
    for workers in (1, 2):
        proc = ctx.procs.nobusy(f"nobusy-w{workers}", fake.port, workers=workers)
        endpoints.append(
            Endpoint(f"workers={workers}", proc.port, "fake-model", gateway=proc, upstream=fake)
        )
    scenarios = [(stream, c) for stream in (False, True) for c in CONCURRENCIES]
    runs = run_rounds(ctx, "workers", endpoints, scenarios)
    return {"paths": [e.name for e in endpoints], "runs": runs}


def rows(result: Result) -> list[Result]:
    return aggregate(result["runs"], baseline=None, reference="workers=1")


def goals(result: Result) -> list[Goal]:
    return []  # the issue sets no target for scale-out; the table shows the factor


def render(result: Result, img: Path) -> str:
    table = rows(result)
    headers = ["mode", "conc.", "workers", "req/s", "chunks/s", "p50 ms", "p99 ms"]
    headers += ["CPU s / 1k req", "× 1 worker", "errors"]
    body = [
        [
            "streaming" if r["stream"] else "non-streaming",
            str(r["concurrency"]),
            r["path"].removeprefix("workers="),
            fmt(r["rps"], 0),
            fmt(r["events_per_s"], 0) if r["stream"] else "—",
            fmt(r["p50_ms"]),
            fmt(r["p99_ms"]),
            fmt(r["gateway_cpu_per_1k"]),
            fmt(r["x_reference"], 2, "×"),
            str(r["errors"]),
        ]
        for r in table
    ]
    plots.bars(
        table,
        result["paths"],
        "nobusy throughput by worker processes (labels: × 1 worker)",
        img / "bench-workers.png",
        annotate="x_reference",
        annotate_paths=("workers=2",),
    )
    intro = (
        "`nobusy serve --workers N` in front of one fake upstream process, on the same 2 cores "
        "as the fake and the load generator: a second worker can only help as far as those "
        "leave a core free. Rounds alternate the two servers."
    )
    return "\n\n".join([intro, md_table(headers, body), "![workers](img/bench-workers.png)"])


SUITE = Suite(
    name="workers",
    title="Scale: one worker against two",
    run=run,
    render=render,
    goals=goals,
)
