"""Pool: four fake vLLM servers (one twice as fast) under four balancing policies, side by side.

Each policy gets fresh fakes (cold prefix caches) and the same mixed workload for the same
time: multi-turn chats whose prefix grows turn by turn, RAG-style questions sharing one of 16
long system prompts, and plain short requests. Clients keep about 80% of the 16 slots busy
(20 clients with short pauses; the measured slot occupancy is reported). Policies:

- round robin and least in-flight: nobusy has neither as a balancing option, so the bench
  client dispatches straight to the fakes itself (it knows its own in-flight counts exactly,
  which is the best least-in-flight can do);
- power of two: nobusy today, ``kind: openai`` upstreams in one tier;
- placement: nobusy, ``kind: vllm`` upstreams in one tier (expected-TTFT scoring with the
  prefix index and bounded-load affinity).

Figures: the prefix-cache hit rate as the fakes count it, TTFT at the client (p50/p95, all
and per workload), idle-while-waiting seconds (the fakes' /metrics sampled every 0.25 s: a
server with nothing running while another has more than 2 waiting), and placement's scoring
cost per request at 16 servers (``bench/placement_cost.py``, in-process).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from pathlib import Path

import httpx
import openai

from bench import placement_cost, procs
from bench.loadgen import percentile
from bench.suites import pool_tiers
from bench.suites.base import Context, Goal, Result, Suite, at_least, at_most, fmt, md_table
from nobusy.upstreams.server_metrics import parse_metrics

POLICIES = ["round robin", "least in-flight", "LiteLLM least-busy", "power of two", "placement"]
PROMPTS = [
    f"Handbook {i}: " + f"rule {i} says to be careful with section {i}. " * 60 for i in range(16)
]
SLOTS = 4  # per fake; four fakes
CLIENTS = 20  # with their pauses, about 80% of the 16 slots busy (the run reports it)
KINDS = ["chat"] * 8 + ["rag"] * 6 + ["short"] * 6
TURNS = 6  # a chat starts over after this many turns
SAMPLE = 0.25
# name, prefill seconds per uncached token, seconds between tokens: a is twice as fast
SPEEDS = [("a", 0.00025, 0.005)] + [(n, 0.0005, 0.01) for n in ("b", "c", "d")]


def _fakes(ctx: Context, policy: str) -> dict[str, procs.Proc]:
    fakes = {}
    for name, prefill, gap in SPEEDS:
        extra = ["--server", "vllm", "--capacity", str(SLOTS), "--cache-blocks", "400"]
        extra += ["--prefill-per-token", str(prefill), "--chunk-delay", str(gap)]
        fakes[name] = ctx.procs.fake_upstream(20, name=f"pool-{policy[:5]}-{name}", extra=extra)
    return fakes


def _litellm_config(fakes: dict[str, procs.Proc]) -> str:
    deployments = "".join(
        "  - model_name: pool\n    litellm_params:\n      model: openai/fake-model\n"
        f"      api_base: 'http://{procs.HOST}:{p.port}/v1'\n      api_key: x\n"
        for p in fakes.values()
    )
    return f"model_list:\n{deployments}router_settings:\n  routing_strategy: least-busy\n"


def _config(fakes: dict[str, procs.Proc], kind: str) -> str:
    lines = [
        f"  {n}: {{kind: {kind}, base_url: 'http://{procs.HOST}:{p.port}/v1', "
        "default_model: fake-model, first_token_timeout: 60}"
        for n, p in fakes.items()
    ]
    return "upstreams:\n" + "\n".join(lines) + "\nmodels:\n  pool: [[a, b, c, d]]\n"


class Dispatch:
    """Where the next request goes: one client per target, and the policy's choice."""

    def __init__(
        self, policy: str, fakes: dict[str, procs.Proc], gateway: int | None, key: str
    ) -> None:
        def client(port: int) -> openai.AsyncOpenAI:
            url = f"http://{procs.HOST}:{port}/v1"
            return openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)

        if gateway is not None:
            self.targets = {"nobusy": client(gateway)}
            self.model = "pool"
        else:
            self.targets = {n: client(p.port) for n, p in fakes.items()}
            self.model = "fake-model"
        self.policy = policy
        self.in_flight = dict.fromkeys(self.targets, 0)
        self.turn = itertools.cycle(list(self.targets))

    def pick(self) -> str:
        if len(self.targets) == 1:
            return next(iter(self.targets))
        if self.policy == "round robin":
            return next(self.turn)
        low = min(self.in_flight.values())  # least in-flight; ties go round
        return next(n for n in self.turn if self.in_flight[n] == low)


async def _ask(d: Dispatch, messages: list[dict[str, str]]) -> tuple[float, str] | None:
    """One streamed request: (TTFT, answer text), None on an error."""
    name = d.pick()
    d.in_flight[name] += 1
    start = time.perf_counter()
    first = None
    text: list[str] = []
    try:
        stream = await d.targets[name].chat.completions.create(
            model=d.model,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                text.append(chunk.choices[0].delta.content)
    except openai.OpenAIError:
        return None
    finally:
        d.in_flight[name] -= 1
    return (first or time.perf_counter()) - start, "".join(text)


async def _client(
    d: Dispatch, i: int, until: float, records: list[tuple[str, float | None]]
) -> None:
    rng = random.Random(i)
    kind = KINDS[i % len(KINDS)]
    messages: list[dict[str, str]] = []
    number = 0
    while time.monotonic() < until:
        if kind == "chat":
            if len(messages) >= 1 + 2 * TURNS or not messages:
                number += 1
                messages = [{"role": "system", "content": PROMPTS[(i * 7 + number) % 16]}]
            messages.append({"role": "user", "content": f"Chat {i}.{number}: what next?"})
            asked = list(messages)
        elif kind == "rag":
            system = PROMPTS[rng.randrange(16)]
            question = f"Client {i} asks {rng.randrange(10**6)} about it?"
            asked = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        else:
            asked = [{"role": "user", "content": f"Short one {rng.randrange(10**6)}."}]
        got = await _ask(d, asked)
        records.append((kind, got[0] if got else None))
        if kind == "chat":
            messages.append({"role": "assistant", "content": got[1] if got else ""})
        await asyncio.sleep(rng.uniform(0.05, 0.2))  # the user reads, then asks again


async def _sample(fakes: dict[str, procs.Proc], until: float, out: dict[str, float]) -> None:
    """Idle-while-waiting: every SAMPLE seconds, read every fake's running and waiting."""
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < until:
            readings = []
            for proc in fakes.values():
                try:
                    text = (await http.get(f"http://{procs.HOST}:{proc.port}/metrics")).text
                except httpx.HTTPError:
                    continue
                reading = parse_metrics("vllm", text)
                readings.append((reading.running or 0.0, reading.waiting or 0.0))
            out["samples"] += 1
            out["running"] += sum(r for r, _ in readings)
            queued = any(w > 2 for _, w in readings)
            if queued and any(r == 0 for r, _ in readings):
                out["idle_s"] += SAMPLE
            if queued and any(r < SLOTS for r, _ in readings):
                out["free_slot_s"] += SAMPLE
            await asyncio.sleep(SAMPLE)


def _one(ctx: Context, policy: str, seconds: float) -> Result:
    fakes = _fakes(ctx, policy)
    gateway = None
    if policy.startswith("LiteLLM"):
        config = _litellm_config(fakes)
        nobusy = ctx.procs.litellm(ctx.litellm(), 0, ctx.key, config=config, name="pool-litellm")
        gateway = nobusy.port
    elif policy in ("power of two", "placement"):
        kind = "vllm" if policy == "placement" else "openai"
        nobusy = ctx.procs.nobusy(f"pool-{policy[:5]}", None, config=_config(fakes, kind))
        gateway = nobusy.port
        time.sleep(1.5)  # placement reads the servers' metrics once
    d = Dispatch(policy, fakes, gateway, ctx.key)
    records: list[tuple[str, float | None]] = []
    sampled = dict.fromkeys(("samples", "running", "idle_s", "free_slot_s"), 0.0)

    async def drive() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(
            _sample(fakes, until, sampled),
            *(_client(d, i, until, records) for i in range(CLIENTS)),
        )

    asyncio.run(drive())
    hits = queries = 0.0
    for proc in fakes.values():
        reading = parse_metrics("vllm", procs.http_call(proc.port, "GET", "/metrics")[1].decode())
        hits += reading.cache_hits or 0.0
        queries += reading.cache_queries or 0.0
    for proc in fakes.values():
        ctx.procs.stop(proc)
    if gateway is not None:
        ctx.procs.stop(nobusy)

    def ttft(kind: str | None) -> dict[str, float | None]:
        got = sorted(t * 1000 for k, t in records if t is not None and kind in (None, k))
        return {
            "p50_ms": percentile(got, 50) if got else None,
            "p95_ms": percentile(got, 95) if got else None,
            "n": len(got),
        }

    row: Result = {
        "policy": policy,
        "requests": len(records),
        "errors": sum(t is None for _, t in records),
        "hit_rate": hits / queries if queries else None,
        "ttft": {k or "all": ttft(k) for k in (None, "chat", "rag", "short")},
        "idle_while_waiting_s": sampled["idle_s"],
        "free_slot_while_waiting_s": sampled["free_slot_s"],
        "occupancy": sampled["running"] / sampled["samples"] / (SLOTS * len(fakes))
        if sampled["samples"]
        else None,
        "seconds": seconds,
    }
    ctx.log(
        f"[pool] {policy:<15} {row['requests']} requests, {row['errors']} errors, hit rate "
        f"{fmt((row['hit_rate'] or 0) * 100, 1)}%, TTFT p95 {fmt(row['ttft']['all']['p95_ms'], 0)}"
        f" ms, idle-while-waiting {row['idle_while_waiting_s']:.2f} s"
    )
    return row


def run(ctx: Context) -> Result:
    seconds = 8.0 if ctx.settings.quick else 30.0
    # LiteLLM only when its virtualenv is there already: installing it takes minutes.
    policies = [p for p in POLICIES if procs.litellm_ready() or not p.startswith("LiteLLM")]
    rows = [_one(ctx, policy, seconds) for policy in policies]
    cost = placement_cost.measure(16, 4000 if ctx.settings.quick else 20000)
    ctx.log(f"[pool] placement scoring at 16 servers: {cost['cpu_ms']:.4f} ms CPU per request")
    tiers = pool_tiers.run_tiers(ctx)
    return {
        "rows": rows,
        "tiers_run": tiers,
        "scoring": cost,
        "load_average": list(os.getloadavg()),
        "litellm": "run" if len(policies) == len(POLICIES) else "not run: no bench/.litellm-venv",
    }


def _row(result: Result, policy: str) -> Result:
    return next((r for r in result.get("rows", []) if r["policy"] == policy), {})


def goals(result: Result) -> list[Goal]:
    base, placed = _row(result, "least in-flight"), _row(result, "placement")
    ratio = None
    if base.get("hit_rate") and placed.get("hit_rate") is not None:
        ratio = placed["hit_rate"] / base["hit_rate"]
    drop = None
    b95, p95 = base.get("ttft", {}).get("all", {}), placed.get("ttft", {}).get("all", {})
    if b95.get("p95_ms") and p95.get("p95_ms") is not None:
        drop = (1 - p95["p95_ms"] / b95["p95_ms"]) * 100
    return [
        at_least("Placement's prefix-cache hit rate over least in-flight's", ratio, 1.5, "×"),
        at_least("Placement's TTFT p95 lower than least in-flight's at ~80% load", drop, 30, "%"),
        at_most(
            "Placement: seconds a server idled while another had > 2 waiting",
            placed.get("idle_while_waiting_s"),
            0,
            "s",
        ),
        at_most(
            "Placement's scoring cost per request at 16 servers (CPU)",
            result.get("scoring", {}).get("cpu_ms"),
            0.2,
            "ms",
        ),
        *pool_tiers.tier_goals(result),
    ]


def render(result: Result, img: Path) -> str:
    del img
    rows = []
    for r in result.get("rows", []):
        t = r["ttft"]
        rows.append(
            [
                r["policy"],
                fmt(r["requests"], 0),
                fmt(r["errors"], 0),
                fmt((r["hit_rate"] or 0) * 100, 1, "%"),
                fmt(t["all"]["p50_ms"], 0),
                fmt(t["all"]["p95_ms"], 0),
                fmt(t["chat"]["p95_ms"], 0),
                fmt(t["rag"]["p95_ms"], 0),
                fmt(t["short"]["p95_ms"], 0),
                fmt(r["idle_while_waiting_s"], 2),
                fmt(r["free_slot_while_waiting_s"], 2),
                fmt((r["occupancy"] or 0) * 100, 0, "%"),
            ]
        )
    table = md_table(
        [
            "policy",
            "requests",
            "errors",
            "cache hit rate",
            "TTFT p50 ms",
            "p95 ms",
            "chat p95",
            "RAG p95",
            "short p95",
            "idle while > 2 waiting (s)",
            "free slot while > 2 waiting (s)",
            "slot occupancy",
        ],
        rows,
    )
    cost = result.get("scoring", {})
    load = ", ".join(f"{x:.1f}" for x in result.get("load_average", []))
    seconds = _row(result, "placement").get("seconds", "?")
    return f"""Four fake vLLM servers (`fake-upstream --server vllm`, {SLOTS} slots each, a waiting
queue, a 400-block prefix cache; `a` prefills and streams twice as fast as `b`, `c`, `d`),
fresh for each policy, {CLIENTS} clients for {seconds} s each: {KINDS.count("chat")} in
multi-turn chats (prefix growing over {TURNS} turns), {KINDS.count("rag")} RAG-style askers (one
of 16 ~3 KB system prompts), {KINDS.count("short")} sending short requests.
Round robin and least in-flight are not balancing options of nobusy: the bench client
dispatches straight to the fakes for them. LiteLLM 1.106.2 (`routing_strategy: least-busy`,
the four fakes as four deployments of one model; {result.get("litellm")}): its TTFT and low
slot occupancy come from its proxy's own cost on the busy cores, not only from its choice of
server. Power of two is nobusy with `kind: openai` upstreams in one tier (today's default);
placement is nobusy with `kind: vllm`. Load average at the end: {load} (2 shared cores).

{table}

Idle while waiting: seconds (sampled every {SAMPLE} s from the fakes' `/metrics`) in which
one server had nothing running (or, next column, a free slot) while another had more than 2
waiting. Slot occupancy: mean running / 16 over the samples; the same clients keep fewer slots
busy where the cache answers prompts faster, so "~80% load" is the baselines' occupancy.

Placement's scoring (order + note of the pick, `bench/placement_cost.py`) at 16 servers:
{fmt(cost.get("cpu_ms"), 4)} ms CPU per request ({fmt(cost.get("wall_ms"), 4)} ms wall).

{pool_tiers.render_tiers(result)}"""


SUITE = Suite(
    name="pool",
    title="Pool: balancing local inference servers",
    run=run,
    render=render,
    goals=goals,
)
