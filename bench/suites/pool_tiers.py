"""Pool, part two: tiers with a cloud behind the local servers, a drain and a dead server.

Four fake vLLM servers (`a` twice as fast) are tier 0; the cloud is the plain fake upstream
with a price, tier 1 (its upstream's ``tier``), and the alias has ``spill_after``. Open-loop
Poisson arrivals of short streamed requests at a demand of 0.7× and 1.3× the local servers'
nominal capacity (their slots over their answer time), then, at 0.7×, a drain of one server
(and its undrain) and a SIGKILL of another, each mid-run. Figures: the share answered by the
cloud (``x-nobusy-upstream``), the local slots' occupancy (the fakes' ``/metrics`` sampled),
broken streams (an error, or no ``finish_reason``/``[DONE]``) and client errors.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson

from bench import procs
from bench.suites.base import Context, Goal, Result, at_least, at_most, fmt, md_table
from nobusy.upstreams.server_metrics import parse_metrics

SLOTS = 4
TOKENS = 40
# name, seconds between tokens: `a` answers in 1 s, the others in 2 s.
SPEEDS = [("a", 0.025), ("b", 0.05), ("c", 0.05), ("d", 0.05)]
CAPACITY = sum(SLOTS / (TOKENS * gap) for _, gap in SPEEDS)  # answers per second, nominal
SPILL_AFTER = 1.0
PRICE = "{currency: CNY, input: 2, output: 8}"
SAMPLE = 0.25


def _config(fakes: dict[str, procs.Proc], cloud: procs.Proc) -> str:
    lines = [
        f"  {n}: {{kind: vllm, base_url: 'http://{procs.HOST}:{p.port}/v1', "
        f"default_model: fake-model, slots: {SLOTS}, max_concurrency: {SLOTS}, "
        "metrics_interval: 0.25, "
        "first_token_timeout: 60}"
        for n, p in fakes.items()
    ]
    lines.append(
        f"  cloud: {{kind: openai, base_url: 'http://{procs.HOST}:{cloud.port}/v1', "
        f"default_model: fake-model, tier: 1, price: {PRICE}}}"
    )
    routes = "[[a, b, c, d], cloud]"
    return (
        "upstreams:\n"
        + "\n".join(lines)
        + f"\nmodels:\n  pool: {{routes: {routes}, spill_after: {SPILL_AFTER}}}\n"
    )


class Phase:
    """One run's outcomes, as the clients saw them."""

    def __init__(self) -> None:
        self.upstreams: dict[str, int] = {}
        self.errors = 0
        self.broken = 0
        self.samples = 0
        self.running = 0.0  # summed over samples, local servers
        self.arrivals = 0
        self.span = 0.0  # seconds the arrivals took (the client may lag its schedule)

    def row(self, name: str, demand: float, seconds: float, tallies: dict[int, int]) -> Result:
        # Who answered, by nobusy's tier tallies over the run: a queued request's
        # x-nobusy-upstream is "queued" (its headers go out before a slot is found).
        answered = sum(tallies.values())
        cloud = tallies.get(1, 0)
        return {
            "phase": name,
            "demand": demand,
            "seconds": seconds,
            "requests": answered + self.errors,
            "errors": self.errors,
            "broken": self.broken,
            "cloud_share": cloud / answered if answered else None,
            "offered": self.arrivals / self.span / CAPACITY if self.span else demand,
            "excess": max(0.0, 1 - self.span * CAPACITY / self.arrivals) if self.arrivals else 0,
            "local_utilisation": self.running / self.samples / (SLOTS * len(SPEEDS))
            if self.samples
            else None,
            "by_upstream": dict(sorted(self.upstreams.items())),
            "by_tier": {str(k): v for k, v in sorted(tallies.items())},
        }


async def _one(http: httpx.AsyncClient, url: str, n: int, phase: Phase) -> None:
    body = {
        "model": "pool",
        "stream": True,
        "messages": [{"role": "user", "content": f"Short question {n}?"}],
    }
    finished = done = False
    try:
        async with http.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                phase.errors += 1
                return
            upstream = response.headers.get("x-nobusy-upstream", "?")
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    event = orjson.loads(line[6:])
                    if "error" in event:
                        break
                    choices = event.get("choices") or [{}]
                    finished = finished or bool(choices[0].get("finish_reason"))
    except httpx.HTTPError:
        phase.errors += 1
        return
    if finished and done:
        phase.upstreams[upstream] = phase.upstreams.get(upstream, 0) + 1
    else:
        phase.broken += 1


async def _sample(fakes: dict[str, procs.Proc], until: float, phase: Phase) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < until:
            running = 0.0
            for proc in fakes.values():
                try:
                    text = (await http.get(f"http://{procs.HOST}:{proc.port}/metrics")).text
                    running += parse_metrics("vllm", text).running or 0.0
                except (httpx.HTTPError, ValueError):
                    continue  # a killed server runs nothing
            phase.samples += 1
            phase.running += running
            await asyncio.sleep(SAMPLE)


async def _drive(
    gateway: procs.Proc,
    fakes: dict[str, procs.Proc],
    demand: float,
    seconds: float,
    events: list[tuple[float, Callable[[], Awaitable[None]]]] = (),  # type: ignore[assignment]
) -> Phase:
    """Poisson arrivals at ``demand`` × capacity for ``seconds``; ``events`` at their times."""
    phase = Phase()
    url = f"http://{procs.HOST}:{gateway.port}/v1/chat/completions"
    rng = random.Random(int(demand * 100))
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        start = time.monotonic()
        until = start + seconds
        sampler = asyncio.create_task(_sample(fakes, until, phase))
        pending = sorted(events, key=lambda e: e[0])
        tasks = []
        # A Poisson process with exactly the demand's count of arrivals in the run: given
        # their number, its arrival times are that many uniform draws, sorted.
        count = round(demand * CAPACITY * seconds)
        times = sorted(rng.uniform(0, seconds) for _ in range(count))
        for n, offset in enumerate(times):
            while pending and pending[0][0] <= offset:
                tasks.append(asyncio.create_task(pending.pop(0)[1]()))
            await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
            tasks.append(asyncio.create_task(_one(http, url, n, phase)))
        n = count
        phase.arrivals, phase.span = n, max(seconds, time.monotonic() - start)
        await sampler
        await asyncio.gather(*tasks)
    return phase


def run_tiers(ctx: Context) -> Result:
    quick = ctx.settings.quick
    seconds = 8.0 if quick else 20.0
    # The spill run longer: its first second, the local slots filling from idle, weighs less.
    high = 8.0 if quick else 30.0
    fakes = {}
    for name, gap in SPEEDS:
        extra = ["--server", "vllm", "--capacity", str(SLOTS), "--chunk-delay", str(gap)]
        fakes[name] = ctx.procs.fake_upstream(TOKENS, name=f"tiers-{name}", extra=extra)
    cloud = ctx.procs.fake_upstream(TOKENS, name="tiers-cloud", extra=["--chunk-delay", "0.02"])
    gateway = ctx.procs.nobusy("tiers", None, config=_config(fakes, cloud))
    time.sleep(1.5)  # the servers' metrics read once
    admin = f"http://{procs.HOST}:{gateway.port}/v1/nobusy/pool"
    rows = []

    async def drain(on: bool) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            await http.post(f"{admin}/b/{'drain' if on else 'undrain'}")

    async def kill() -> None:
        os.killpg(fakes["c"].pid, signal.SIGKILL)

    async def pause() -> None:
        await asyncio.sleep(0)

    plan: list[tuple[str, float, float, list[tuple[float, Callable[[], Awaitable[None]]]]]] = [
        ("demand 0.7×", 0.7, seconds, []),
        ("demand 1.3×", 1.3, high, []),
        (
            "drain b at 1/3, undrain at 2/3 (0.7×)",
            0.7,
            seconds,
            [(seconds / 3, lambda: drain(True)), (2 * seconds / 3, lambda: drain(False))],
        ),
        ("SIGKILL c at 1/3 (0.7×)", 0.7, seconds, [(seconds / 3, kill)]),
    ]

    def answered() -> dict[int, int]:
        body = orjson.loads(procs.http_call(gateway.port, "GET", "/v1/nobusy/pool")[1])
        return {t["tier"]: t["answered"] for t in body["tiers"]}

    for name, demand, length, events in plan:
        before = answered()
        phase = asyncio.run(_drive(gateway, fakes, demand, length, events or [(0, pause)]))
        after = answered()
        row = phase.row(name, demand, length, {k: v - before.get(k, 0) for k, v in after.items()})
        rows.append(row)
        ctx.log(
            f"[pool tiers] {name}: {row['requests']} requests, cloud "
            f"{fmt((row['cloud_share'] or 0) * 100, 1)}%, local occupancy "
            f"{fmt((row['local_utilisation'] or 0) * 100, 1)}%, {row['errors']} errors, "
            f"{row['broken']} broken; by tier {row['by_tier']}"
        )
        time.sleep(2)  # the queues drain before the next phase
    tiers = orjson.loads(procs.http_call(gateway.port, "GET", "/v1/nobusy/pool")[1])["tiers"]
    for proc in (*fakes.values(), cloud, gateway):
        ctx.procs.stop(proc)
    return {"rows": rows, "tiers": tiers, "capacity": CAPACITY, "spill_after": SPILL_AFTER}


def _phase(result: Result, start: str) -> dict[str, Any]:
    rows = result.get("tiers_run", {}).get("rows", [])
    return next((r for r in rows if r["phase"].startswith(start)), {})


def tier_goals(result: Result) -> list[Goal]:
    high, low = _phase(result, "demand 1.3"), _phase(result, "demand 0.7")
    drained, killed = _phase(result, "drain"), _phase(result, "SIGKILL")
    over = None
    if high.get("cloud_share") is not None:
        over = (high["cloud_share"] - high["excess"]) * 100
    return [
        at_least(
            "Demand 1.3× local: local utilisation",
            _pct(high.get("local_utilisation")),
            90,
            "%",
        ),
        at_most("Demand 1.3× local: cloud share over the excess demand", over, 5, " points"),
        at_most("Demand 0.7× local: cloud share", _pct(low.get("cloud_share")), 1, "%"),
        at_most("Draining a server under load: broken streams", _broken(drained), 0, ""),
        at_most("A server killed under load: client errors", _broken(killed), 0, ""),
    ]


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100


def _broken(row: dict[str, Any]) -> float | None:
    return None if not row else float(row["errors"] + row["broken"])


def render_tiers(result: Result) -> str:
    run = result.get("tiers_run")
    if not run:
        return ""
    rows = []
    for r in run["rows"]:
        rows.append(
            [
                r["phase"],
                fmt(r["requests"], 0),
                fmt((r["local_utilisation"] or 0) * 100, 1, "%"),
                fmt((r["cloud_share"] or 0) * 100, 1, "%"),
                f"{r['offered']:.2f}×",
                fmt(r["excess"] * 100, 1, "%"),
                fmt(r["errors"], 0),
                fmt(r["broken"], 0),
                ", ".join(f"tier {k}: {v}" for k, v in r["by_tier"].items()),
            ]
        )
    table = md_table(
        [
            "run",
            "requests",
            "local occupancy",
            "cloud share",
            "offered load",
            "excess demand",
            "client errors",
            "broken streams",
            "answers by tier",
        ],
        rows,
    )
    tiers = md_table(
        ["tier", "upstreams", "answers", "share", "spilled share", "spill cost"],
        [
            [
                str(t["tier"]),
                ", ".join(t["upstreams"]),
                fmt(t["answered"], 0),
                fmt(t["share"] * 100, 1, "%"),
                fmt(t["spilled_share"] * 100, 1, "%"),
                f"{t['spill_cost']:.4f} {t['currency']}",
            ]
            for t in run.get("tiers", [])
        ],
    )
    first, high = run["rows"][0]["seconds"], run["rows"][1]["seconds"]
    return f"""### Tiers: local first, spill to the cloud

The same four kinds of fake vLLM server ({SLOTS} slots, {TOKENS} tokens an answer: `a` in 1 s,
`b`, `c`, `d` in 2 s: a nominal local capacity of {fmt(run["capacity"], 0)} answers a second)
are tier 0, with `slots: {SLOTS}` and `max_concurrency: {SLOTS}` (requests beyond the slots
wait in nobusy's queue, where a slot freed on any server takes the next). The plain fake
upstream with a price (`{PRICE}` per million tokens) is the cloud, tier 1;
`spill_after: {run["spill_after"]:g}`. Open-loop Poisson arrivals (exactly demand × capacity ×
seconds of them, at uniform random times) of short streamed requests,
{first:g} s a run ({high:g} s at 1.3×), one after the other on the same nobusy: demand 0.7×
and 1.3× the local capacity, then at 0.7× a drain of `b` (undrained later) and a SIGKILL of
`c`, mid-run. Local occupancy: running / 16 from the fakes' `/metrics` sampled every
{SAMPLE} s. Offered load: the arrivals the client made over the seconds it took, over the
nominal local capacity; excess demand: 1 − 1/offered load, the share the local tier cannot
serve even when fully used. Broken stream: an error event or no `finish_reason` and `[DONE]`.

{table}

nobusy's own tier report after the runs (`/v1/nobusy/pool`, the same numbers as `nobusy pool`
and `nobusy_tier_*` in `/metrics`); the spill cost is usage × the cloud's price:

{tiers}
"""
