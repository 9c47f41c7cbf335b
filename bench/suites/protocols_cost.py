"""Adapter cost, part of the ``protocols`` suite: what the Messages and Responses adapters add
over the chat path, through one nobusy in front of one fake with no delay.

*Latency*: one client sends a chat, a Messages and a Responses request in turn, each on its own
keep-alive connection, so whatever else the two cores do hits the three alike (as
``replicas_cost.latency`` does); cut into rounds, each path's p50 and p95 per round, the
adapter minus chat per round, and the median over rounds. *Throughput*: 32 connections on one
path at a time, the three paths in turn each round (``base.run_rounds``'s order), the ratio to
chat of the same round. Responses requests send ``store: false``, so the figure is the
adapter's and not the response store's (which a chat request never writes).
"""

from __future__ import annotations

import http.client
import json
import os
import time
from typing import Any

from bench import procs
from bench.loadgen import LoadSpec, chat_body, run_load
from bench.suites.base import Context, Result, median, summarise

__all__ = ["PATHS", "cost"]

PATHS = ("chat", "messages", "responses")
_ROUTES = {
    "chat": "/v1/chat/completions",
    "messages": "/v1/messages",
    "responses": "/v1/responses",
}
MODEL = "fake-model"


def body(path: str, stream: bool) -> dict[str, Any]:
    """The same question in each protocol."""
    if path == "chat":
        return chat_body(MODEL, stream)
    if path == "messages":
        return {"model": MODEL, "max_tokens": 256, "stream": stream,
                "messages": [{"role": "user", "content": "Hello"}]}  # fmt: skip
    return {"model": MODEL, "input": "Hello", "stream": stream, "store": False}


def headers(path: str, key: str) -> dict[str, str]:
    if path == "messages":  # as the anthropic SDK sends them
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return {"Authorization": f"Bearer {key}"}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def _call(
    conn: http.client.HTTPConnection, path: str, raw: bytes, head: dict[str, str]
) -> float | None:
    """One request on a keep-alive connection, read to its end: seconds, or None."""
    started = time.perf_counter()
    try:
        conn.request(
            "POST", _ROUTES[path], body=raw, headers={"Content-Type": "application/json", **head}
        )
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        return None
    took = time.perf_counter() - started
    return took if response.status == 200 else None


def latency(ctx: Context, port: int, stream: bool) -> Result:
    """The three paths request by request, rotating who goes first, in rounds."""
    rounds, cycles = (3, 150) if ctx.settings.quick else (10, 400)
    raws = {p: json.dumps(body(p, stream)).encode() for p in PATHS}
    heads = {p: headers(p, ctx.key) for p in PATHS}
    conns = {p: http.client.HTTPConnection(procs.HOST, port, timeout=10) for p in PATHS}
    samples: dict[str, list[list[float]]] = {p: [] for p in PATHS}
    errors = 0
    try:
        for _ in range(100):  # warm: connections, imports on first use
            for p in PATHS:
                _call(conns[p], p, raws[p], heads[p])
        for number in range(rounds):
            times: dict[str, list[float]] = {p: [] for p in PATHS}
            for cycle in range(cycles):
                shift = (cycle + number) % len(PATHS)
                for p in PATHS[shift:] + PATHS[:shift]:
                    took = _call(conns[p], p, raws[p], heads[p])
                    if took is None:
                        errors += 1
                    else:
                        times[p].append(took * 1000)
            for p, values in times.items():
                samples[p].append(values)
    finally:
        for conn in conns.values():
            conn.close()
    rows: Result = {}
    for p, per_round in samples.items():
        every = [v for values in per_round for v in values]
        rows[p] = {"requests": len(every), "p50_ms": _pct(every, 50), "p95_ms": _pct(every, 95),
                   "round_p50_ms": [round(_pct(v, 50), 4) for v in per_round],
                   "round_p95_ms": [round(_pct(v, 95), 4) for v in per_round]}  # fmt: skip
    added: Result = {}
    for p in PATHS[1:]:
        for q in (50, 95):
            diffs = [_pct(a, q) - _pct(c, q)
                     for a, c in zip(samples[p], samples["chat"], strict=True)]  # fmt: skip
            added[f"{p}_p{q}"] = {"median_ms": median(diffs),
                                  "rounds_ms": [round(d, 4) for d in diffs]}  # fmt: skip
    mode = "stream" if stream else "non-stream"
    ctx.log(f"[protocols] latency {mode}: chat p50 {rows['chat']['p50_ms']:.3f} ms; added p50 "
            f"Messages {added['messages_p50']['median_ms']:+.3f} ms, "
            f"Responses {added['responses_p50']['median_ms']:+.3f} ms")  # fmt: skip
    return {"rounds": rounds, "cycles": cycles, "errors": errors, "paths": rows, "added": added}


def throughput(ctx: Context, nobusy: procs.Proc, fake: procs.Proc, stream: bool) -> Result:
    """32 connections, each path in turn per round; ratios to chat of the same round."""
    s = ctx.settings
    rounds = 2 if s.quick else 5
    runs: dict[str, list[Result]] = {p: [] for p in PATHS}
    for number in range(rounds):
        order = PATHS[number % 3 :] + PATHS[: number % 3]
        for p in order:
            spec = LoadSpec(nobusy.port, json.dumps(body(p, stream)).encode(), stream,
                            headers(p, ctx.key), path=_ROUTES[p])  # fmt: skip
            trees = {"gateway": nobusy.tree(), "upstream": fake.tree()}
            cpu: dict[str, float] = {}

            def start(trees: dict[str, list[int]] = trees, cpu: dict[str, float] = cpu) -> None:
                for role, pids in trees.items():
                    cpu[role] = -procs.cpu_seconds(pids)

            def end(trees: dict[str, list[int]] = trees, cpu: dict[str, float] = cpu) -> None:
                for role, pids in trees.items():
                    cpu[role] += procs.cpu_seconds(pids)

            result = run_load(spec, 32, duration=s.duration, warmup=s.warmup,
                              min_round_trips=s.min_round_trips, max_window=s.max_window,
                              on_start=start, on_end=end)  # fmt: skip
            row = summarise(result, cpu)
            runs[p].append(row)
            ctx.log(f"[protocols] throughput {'stream' if stream else 'non-stream'} c=32 "
                    f"round {number + 1}/{rounds} {p:<9} {row['rps']:8,.0f} req/s "
                    f"errors {row['errors']}")  # fmt: skip
    out: Result = {"rounds": rounds, "concurrency": 32, "paths": {}}
    for p in PATHS:
        rps = [r["rps"] for r in runs[p]]
        ratios = [
            a["rps"] / c["rps"] for a, c in zip(runs[p], runs["chat"], strict=True) if c["rps"]
        ]
        out["paths"][p] = {
            "rps": median(rps),
            "round_rps": [round(v, 1) for v in rps],
            "x_chat": median(ratios),
            "p50_ms": median(r["latency_ms"]["p50"] for r in runs[p] if r["latency_ms"]),
            "gateway_cpu_per_1k": median(r["gateway_cpu_per_1k"] for r in runs[p]),
            "errors": sum(int(r["errors"]) for r in runs[p]),
        }
    return out


def cost(ctx: Context) -> Result:
    """One fake (no delay), one nobusy with its chat, Messages and Responses endpoints."""
    fake = ctx.procs.fake_upstream(ctx.settings.tokens, name="protocols-cost-fake")
    nobusy = ctx.procs.nobusy("nobusy-protocols-cost", fake.port)
    load = {"before": os.getloadavg()}
    out: Result = {"tokens": ctx.settings.tokens}
    try:
        modes = (("non-stream", False), ("stream", True))
        out["latency"] = {mode: latency(ctx, nobusy.port, stream) for mode, stream in modes}
        out["throughput"] = {mode: throughput(ctx, nobusy, fake, stream) for mode, stream in modes}
    finally:
        ctx.procs.stop(nobusy)
        ctx.procs.stop(fake)
    load["after"] = os.getloadavg()
    out["load_average"] = load
    return out
