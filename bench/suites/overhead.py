"""Overhead: the same requests straight to the fake, through nobusy, and through LiteLLM."""

from __future__ import annotations

from pathlib import Path

from bench import plots, procs
from bench.loadgen import chat_body
from bench.suites.base import (
    Context,
    Endpoint,
    Goal,
    Result,
    Suite,
    aggregate,
    at_least,
    at_most,
    find,
    fmt,
    md_table,
    run_rounds,
)

PATHS = ["direct", "nobusy", "litellm"]


def _check(ctx: Context, endpoint: Endpoint) -> None:
    """One request of each kind before measuring: a path that cannot answer is left out."""
    for stream in (False, True):
        try:
            status, body = procs.http_json(
                endpoint.port, chat_body(endpoint.model, stream), ctx.headers
            )
        except OSError as exc:
            status, body = 0, str(exc).encode()
        if status != 200:
            endpoint.error = f"test request (stream={stream}) answered {status}: {body[:300]!r}"
            ctx.log(f"[overhead] {endpoint.name}: {endpoint.error}; leaving it out")
            return


def run(ctx: Context) -> Result:
    s = ctx.settings
    fake = ctx.procs.fake_upstream(s.tokens)
    nobusy = ctx.procs.nobusy("nobusy", fake.port)
    endpoints = [
        Endpoint("direct", fake.port, "fake-model", upstream=fake),
        Endpoint("nobusy", nobusy.port, "fake-model", gateway=nobusy, upstream=fake),
    ]
    install = ctx.litellm()
    litellm = Endpoint("litellm", 0, "fake-model", upstream=fake)
    if install.ok:
        try:
            proc = ctx.procs.litellm(install, fake.port, ctx.key)
            litellm.port, litellm.gateway = proc.port, proc
        except procs.StartError as exc:
            litellm.error = f"LiteLLM proxy did not start: {exc}"
            ctx.log(f"[overhead] {litellm.error}")
    else:
        litellm.error = f"LiteLLM {procs.LITELLM_VERSION} could not be installed: {install.error}"
    endpoints.append(litellm)
    for endpoint in endpoints:
        if endpoint.error is None:
            _check(ctx, endpoint)
    scenarios = [(stream, c) for stream in (False, True) for c in s.concurrencies]
    runs = run_rounds(ctx, "overhead", endpoints, scenarios)
    return {
        "paths": [e.name for e in endpoints],
        "errors": {e.name: e.error for e in endpoints if e.error},
        "litellm": {
            "version": procs.LITELLM_VERSION,
            "installed": install.ok,
            "install_error": install.error,
            "install_seconds": install.seconds,
        },
        "runs": runs,
    }


def rows(result: Result) -> list[Result]:
    return aggregate(result["runs"], baseline="direct", reference="litellm")


def goals(result: Result) -> list[Goal]:
    table = rows(result)
    one = find(table, stream=False, concurrency=1, path="nobusy") or {}
    why = result.get("errors", {}).get("litellm", "")
    why = why.splitlines()[0][:200] if why else "no LiteLLM figure"
    plain = find(table, stream=False, concurrency=32, path="nobusy") or {}
    streamed = find(table, stream=True, concurrency=32, path="nobusy") or {}
    return [
        at_most(
            "Added latency p50, concurrency 1, non-streaming", one.get("added_p50_ms"), 1, "ms"
        ),
        at_most(
            "Added latency p99, concurrency 1, non-streaming", one.get("added_p99_ms"), 5, "ms"
        ),
        at_least(
            "Throughput vs LiteLLM, concurrency 32, non-streaming",
            plain.get("x_reference"),
            10,
            "×",
            why,
        ),
        at_least(
            "Throughput vs LiteLLM, concurrency 32, streaming",
            streamed.get("x_reference"),
            15,
            "×",
            why,
        ),
    ]


def render(result: Result, img: Path) -> str:
    table = rows(result)
    paths = [p for p in result["paths"] if any(r["path"] == p for r in table)]
    parts = [
        "Each path gets the same requests from the same client on the same cores; the fake "
        "upstream answers every request at once, so what is left is the cost of the path. "
        "*added* is the path's figure minus the direct path's in the same round; "
        "*× LiteLLM* is the path's throughput over LiteLLM's in the same round; CPU is the "
        "gateway's processes' user + system time per 1,000 requests (for `direct`, nothing: "
        "the fake's own CPU is in the raw results). *client CPU* is the load generator's "
        "share of a core: near 100% it, not the path, may be the limit."
    ]
    for name, error in result.get("errors", {}).items():
        first = error.strip().splitlines()
        parts.append(f"**{name} was not measured**: {first[0] if first else error}")
        if len(first) > 1:
            parts.append("```\n" + "\n".join(first[-12:]) + "\n```")
    for stream, mode in ((False, "Non-streaming"), (True, "Streaming")):
        mine = [r for r in table if r["stream"] == stream]
        if not mine:
            continue
        headers = ["conc.", "path", "req/s"]
        if stream:
            headers.append("chunks/s")
        headers += ["p50 ms", "p99 ms", "added p50", "added p99"]
        if stream:
            headers += ["TTFT p50", "added TTFT"]
        headers += ["CPU s / 1k req", "× LiteLLM", "client CPU", "errors"]
        body = []
        for r in mine:
            line = [str(r["concurrency"]), r["path"], fmt(r["rps"], 0)]
            if stream:
                line.append(fmt(r["events_per_s"], 0))
            line += [fmt(r["p50_ms"]), fmt(r["p99_ms"])]
            line += [fmt(r["added_p50_ms"]), fmt(r["added_p99_ms"])]
            if stream:
                line += [fmt(r["ttft_p50_ms"]), fmt(r["added_ttft_p50_ms"])]
            line += [
                fmt(r["gateway_cpu_per_1k"]),
                fmt(r["x_reference"], 1, "×"),
                fmt(r["loadgen_cpu"] * 100 if r["loadgen_cpu"] is not None else None, 0, "%"),
                str(r["errors"]),
            ]
            body.append(line)
        parts.append(f"### {mode}\n\n" + md_table(headers, body, "rl" + "r" * (len(headers) - 2)))
    plots.latency_lines(table, paths, "Latency against concurrency", img / "bench-latency.png")
    plots.bars(
        table,
        paths,
        "Throughput at saturation (labels: nobusy × LiteLLM)",
        img / "bench-throughput.png",
        annotate="x_reference",
        annotate_paths=("nobusy",),
        log=True,
    )
    parts.append("![latency against concurrency](img/bench-latency.png)")
    parts.append("![throughput per path](img/bench-throughput.png)")
    return "\n\n".join(parts)


SUITE = Suite(
    name="overhead",
    title="Overhead: direct, through nobusy, through LiteLLM",
    run=run,
    render=render,
    goals=goals,
)
