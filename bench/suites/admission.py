"""Admission under overload: what clients get when demand exceeds an upstream's capacity,
through nobusy and through LiteLLM (issue 5's benchmarks).

Every gateway gets its own fake upstream with 4 slots (``--capacity 4``: a 5th concurrent
request is answered 503 "Server busy", without ``Retry-After``), 12 tokens 40 ms apart (about
0.45 s an answer). Its capacity is measured first, directly, with 4 closed-loop connections.
Clients are open-loop: requests are sent at a fixed rate, each on its own connection, whatever
happened to the earlier ones, and each client gives up after ``PATIENCE + GRACE`` seconds
(nobusy is told the patience with ``x-nobusy-max-wait``). Every request streams.

1. *Burst*: 3× capacity for 15 s, through nobusy with ``max_concurrency: 4``, nobusy without
   it (the adaptive limit alone; and once more with its circuit breaker relaxed, to see the
   limit without the breaker; and in front of a fake that queues beyond its slots instead of
   refusing, as local servers do) and LiteLLM (``num_retries: 2``). The nobusy runs share
   the same seconds (their processes use little CPU at this rate); LiteLLM runs alone.
2. *Sustained*: 5× capacity for 60 s through nobusy, 10% of it from a ``priority: high`` key.
3. *Abuser*: three normal keys at 70% of capacity together, alone and then beside a fourth key
   sending 20× one normal key's rate; LiteLLM's database-less proxy has only its master key,
   so there the four "keys" are four groups of clients it cannot tell apart.
4. *Floods* (``admission_floods``): normal keys sending at random times, alone and beside a
   flood at 5-20× capacity with a patience of 5 or 30 s (nobusy only).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.loadgen import LoadSpec, chat_body, run_load, run_open
from bench.suites import admission_floods
from bench.suites.admission_report import (
    ABUSE_X,
    BURST_X,
    CHUNK_DELAY,
    GRACE,
    HIGH_EVERY,
    NORMAL_LOAD,
    PATIENCE,
    PROMPT,
    SLOTS,
    SUSTAINED_X,
    TOKENS,
    classify,
    goals,
    pcts,
    per_second,
    plan,
    render,
    summarise,
)
from bench.suites.base import Context, Result, Suite

FAKE_FLAGS = ["--capacity", str(SLOTS), "--chunk-delay", str(CHUNK_DELAY), "--retry-after", "-1"]
RELAXED_CIRCUIT = "{consecutive_failures: 1000000, min_requests: 1000000}"
NOBUSY_VARIANTS = {
    "nobusy": f"max_concurrency: {SLOTS}",
    "nobusy-adaptive": "",
    "nobusy-adaptive-nocircuit": f"circuit: {RELAXED_CIRCUIT}",
    "nobusy-local": "",
}
# The last variant's fake queues beyond its slots instead of refusing, as vLLM or llama.cpp do:
# the limit must find its capacity from the time to first token alone.
FAKE_EXTRA = {"nobusy-local": ["--queue"]}
FAIR_CLIENTS = ("normal-1", "normal-2", "normal-3")
FAIR_TAIL_S = 3.0  # after a phase, what normal keys still get to finish their answers


# --- configurations ---------------------------------------------------------------------------


def _url(port: int) -> str:
    return f"http://{procs.HOST}:{port}/v1"


def nobusy_yaml(fake_port: int, extra: str) -> str:
    more = f", {extra}" if extra else ""
    return (
        "upstreams:\n"
        f'  fake: {{kind: openai, base_url: "{_url(fake_port)}", default_model: ok{more}}}\n'
        "models:\n"
        "  chat: [fake/ok]\n"
    )


def litellm_yaml(fake_port: int) -> str:
    return (
        "model_list:\n"
        "  - model_name: chat\n"
        f'    litellm_params: {{model: "openai/ok", api_base: "{_url(fake_port)}", '
        "api_key: x, num_retries: 2}\n"
    )


@dataclass
class Gateway:
    """One gateway in front of its own fake upstream."""

    name: str
    port: int
    fake: procs.Proc
    proc: procs.Proc
    headers: dict[str, str]
    config: str

    def spec(self, extra: dict[str, str] | None = None) -> LoadSpec:
        body = json.dumps(chat_body("chat", True, PROMPT)).encode()
        return LoadSpec(self.port, body, True, {**self.headers, **(extra or {})})


# --- what the processes say while a run goes on ---------------------------------------------------


class Sampler:
    """Polls fakes (``/_fake/stats``) and nobusy (``/v1/nobusy/upstreams``) from a thread,
    every ``interval`` seconds from ``start()`` (called at the run's time zero)."""

    def __init__(self, fakes: dict[str, int], gateways: dict[str, int], interval: float = 0.25):
        self.fakes, self.gateways, self.interval = fakes, gateways, interval
        self.samples: dict[str, list[list[Any]]] = {n: [] for n in (*fakes, *gateways)}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="admission-sampler", daemon=True)
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.thread.start()

    def stop(self) -> dict[str, list[list[Any]]]:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join(5)
        return self.samples

    def _loop(self) -> None:
        while not self.done.wait(self.interval):
            t = round(time.perf_counter() - self.t0, 2)
            for name, port in self.fakes.items():
                with suppress(OSError, ValueError):
                    stats = fake_stats(port)
                    self.samples[name].append(
                        [
                            t,
                            stats["in_flight"],
                            stats["requests"],
                            stats["rejected"],
                            stats.get("queued", 0),
                        ]
                    )
            for name, port in self.gateways.items():
                with suppress(OSError, ValueError, KeyError, IndexError):
                    view = nobusy_view(port)
                    self.samples[name].append(
                        [t, view["limit"], view["in_flight"], view["queued"], view["state"]]
                    )


def fake_stats(port: int) -> dict[str, int]:
    status, body = procs.http_call(port, "GET", "/_fake/stats", timeout=2)
    return json.loads(body) if status == 200 else {}


def fake_reset(port: int) -> None:
    procs.http_call(port, "POST", "/_fake/reset")


def nobusy_view(port: int) -> Result:
    """The one upstream as nobusy sees it: working limit, in flight, circuit, queue."""
    status, body = procs.http_call(port, "GET", "/v1/nobusy/upstreams", timeout=2)
    data = json.loads(body)
    upstream = data["data"][0]
    concurrency = upstream.get("concurrency") or {}
    return {
        "limit": concurrency.get("limit"),
        "in_flight": concurrency.get("in_flight"),
        "drops": concurrency.get("drops"),
        "slowdowns": concurrency.get("slowdowns"),
        "ceiling": concurrency.get("ceiling"),
        "state": upstream.get("state"),
        "ejections": upstream.get("ejections"),
        "failures": upstream.get("failures"),
        "queued": sum((data.get("queue") or {}).values()),
    }


def _settle(port: int, log: Callable[[str], None], limit: float = 10.0) -> None:
    """Wait until nobusy has nothing queued and nothing in flight (clients were cut off)."""
    ends = time.monotonic() + limit
    while time.monotonic() < ends:
        with suppress(OSError, ValueError, KeyError, IndexError):
            view = nobusy_view(port)
            if not view["queued"] and not view["in_flight"]:
                return
        time.sleep(0.1)
    log("[admission] nobusy still busy after the run's clients left")


# --- the run ------------------------------------------------------------------------------------


@dataclass
class _Setup:
    ctx: Context
    plan: Result
    capacity: float = 0.0  # answers per second the fake gives, measured directly
    service_ms: float = 0.0  # one answer, direct, p50
    direct_ttft_ms: float = 0.0


def _measure_capacity(setup: _Setup, fake: procs.Proc) -> Result:
    """4 closed-loop connections straight to the fake: its answers per second."""
    body = json.dumps(chat_body("ok", True, PROMPT)).encode()
    result = run_load(
        LoadSpec(fake.port, body, True),
        SLOTS,
        duration=setup.plan["capacity_s"],
        warmup=0.5,
        min_round_trips=0,
    )
    fake_reset(fake.port)
    latency = result.latency
    if latency is None:
        raise RuntimeError(f"the fake answered nothing directly: {result.statuses}")
    # Slots over the mean answer time: a window of a few seconds would count whole waves of
    # 4 answers, a quantisation of ~10%.
    setup.capacity = SLOTS / latency.mean
    setup.service_ms = latency.mean * 1000
    setup.direct_ttft_ms = result.ttft.p50 * 1000 if result.ttft else 0.0
    setup.ctx.log(
        f"[admission] capacity {setup.capacity:.2f} answers/s "
        f"({SLOTS} slots, {setup.service_ms:.0f} ms an answer, errors {result.errors})"
    )
    return {
        "answers_per_s": setup.capacity,
        "service_ms": setup.service_ms,
        "service_p99_ms": latency.p99 * 1000,
        "direct_ttft_ms": setup.direct_ttft_ms,
        "closed_loop_rps": result.rps,
        "errors": result.errors,
        "duration_s": result.duration,
    }


def _launch_nobusy(ctx: Context, name: str, extra: str) -> Gateway:
    """A fake and nobusy in front of it, launched; ``_ready`` waits for them."""
    flags = [*FAKE_FLAGS, *FAKE_EXTRA.get(name, [])]
    fake = ctx.procs.fake_upstream(TOKENS, name=f"fake-{name}", extra=flags, wait=False)
    config = nobusy_yaml(fake.port, extra)
    proc = ctx.procs.nobusy(name, None, config=config, wait=False)
    headers = {"x-nobusy-max-wait": f"{PATIENCE:g}"}
    return Gateway(name, proc.port, fake, proc, headers, config)


def _ready(ctx: Context, gateways: list[Gateway]) -> None:
    for gateway in gateways:
        ctx.procs.ready(gateway.fake)
        ctx.procs.ready(gateway.proc)


class _LiteLLMStarter:
    """LiteLLM's proxy, launched before nobusy's bursts and waited for after them (it takes
    several seconds to import)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.error: str | None = None
        self.proc: procs.Proc | None = None
        install = ctx.litellm()
        if not install.ok:
            self.error = f"LiteLLM {procs.LITELLM_VERSION} could not be installed: {install.error}"
            return
        self.fake = ctx.procs.fake_upstream(
            TOKENS, name="fake-litellm", extra=FAKE_FLAGS, wait=False
        )
        self.config = litellm_yaml(self.fake.port)
        self.proc = ctx.procs.litellm(
            install, 0, ctx.key, config=self.config, name="litellm-admission", wait=False
        )

    def join(self) -> Gateway | None:
        if self.proc is None:
            return None
        try:
            self.ctx.procs.ready(self.fake)
        except procs.StartError as exc:
            self.error = f"its fake upstream did not start: {exc}"
            return None
        try:
            self.ctx.procs.ready(self.proc)
        except procs.StartError as exc:
            self.error = f"LiteLLM proxy did not start: {exc}"
            return None
        return Gateway(
            "litellm", self.proc.port, self.fake, self.proc, self.ctx.headers, self.config
        )


def _warm(gateways: list[Gateway]) -> None:
    """A couple of answers per gateway (imports and connection pools), then zero the fakes."""
    run_open([(0.05 * i, g.spec(), 20.0) for g in gateways for i in range(2)])
    time.sleep(0.6)
    for g in gateways:
        fake_reset(g.fake.port)


def _cpu(gateways: list[Gateway]) -> dict[str, float]:
    return {g.name: procs.cpu_seconds(g.proc.tree()) for g in gateways}


def _burst(setup: _Setup, gateways: list[Gateway]) -> dict[str, Result]:
    """3× capacity for ``burst_s`` through each gateway at once, each to its own fake."""
    ctx, seconds = setup.ctx, setup.plan["burst_s"]
    rate = BURST_X * setup.capacity
    count = round(rate * seconds)
    requests: list[tuple[float, LoadSpec, float]] = []
    owners: list[str] = []
    for j, gateway in enumerate(gateways):
        offset = j / (rate * len(gateways))  # the gateways' arrivals interleave
        spec = gateway.spec()
        for i in range(count):
            requests.append((offset + i / rate, spec, PATIENCE + GRACE))
            owners.append(gateway.name)
    names = ", ".join(g.name for g in gateways)
    ctx.log(f"[admission] burst: {count} requests at {rate:.1f}/s for {seconds:g}s via {names}")
    sampler = Sampler(
        {f"fake:{g.name}": g.fake.port for g in gateways},
        {g.name: g.port for g in gateways if g.name.startswith("nobusy")},
    )
    cpu = _cpu(gateways)
    started = time.monotonic()
    sents = run_open(requests, on_start=sampler.start)
    wall = time.monotonic() - started
    time.sleep(0.3)  # the fakes see the last requests end
    samples = sampler.stop()
    used = {name: seconds - cpu[name] for name, seconds in _cpu(gateways).items()}
    out: dict[str, Result] = {}
    for gateway in gateways:
        recs = [classify(s) for s, o in zip(sents, owners, strict=True) if o == gateway.name]
        stats = fake_stats(gateway.fake.port)
        summary = summarise(recs, (1.0, seconds), setup.capacity)
        calls, rejected = stats.get("requests", 0), stats.get("rejected", 0)
        summary |= {
            "rate_per_s": rate,
            "upstream": stats,
            "calls_per_request": calls / len(recs) if recs else None,
            "upstream_rejected_share": rejected / calls if calls else None,
            "gateway_cpu_s": used[gateway.name],
            "wall_s": wall,
            "per_second": per_second(recs, max(r["t"] + r["ms"] / 1000 for r in recs)),
            "samples": samples.get(f"fake:{gateway.name}", []),
            "nobusy_samples": samples.get(gateway.name, []),
        }
        if gateway.name.startswith("nobusy"):
            summary["nobusy_view"] = nobusy_view(gateway.port)
        queued = [s[4] for s in summary["samples"] if len(s) > 4 and s[0] <= seconds]
        if queued and gateway.name in FAKE_EXTRA:
            # How many waited inside the upstream, sampled every 0.25 s while arrivals lasted.
            summary["upstream_queue"] = {
                "max": max(queued),
                "p50": sorted(queued)[len(queued) // 2],
            }
        out[gateway.name] = summary
        ctx.log(f"[admission] burst via {gateway.name}: {_line(summary)}")
    return out


def _line(s: Result) -> str:
    share = s["answered_share"] or 0.0
    text = f"{s['answered']}/{s['decided']} answered ({share:.0%})"
    if "calls_per_request" in s and s["calls_per_request"] is not None:
        text += f", {s['calls_per_request']:.2f} upstream calls each"
        text += f", {s['upstream'].get('rejected', 0)} rejected upstream"
    if s["goodput_share"] is not None:
        text += f", goodput {s['goodput_share']:.0%} of capacity"
    others = {k: v for k, v in s["failures"].items()}
    return text + (f"; {others}" if others else "")


def _create_keys(port: int, names: dict[str, str]) -> dict[str, str]:
    """Keys made over nobusy's admin API (loopback needs no admin key): name -> secret."""
    secrets: dict[str, str] = {}
    for name, priority in names.items():
        status, body = procs.http_call(
            port, "POST", "/v1/nobusy/keys", {"name": name, "priority": priority}
        )
        if status != 201:
            raise RuntimeError(f"creating key {name!r}: HTTP {status}: {body[:200]!r}")
        secrets[name] = json.loads(body)["secret"]
    return secrets


def _sustained(setup: _Setup, gateway: Gateway, secrets: dict[str, str]) -> Result:
    """5× capacity for ``sustained_s``; every ``HIGH_EVERY``-th request from the high key."""
    ctx, seconds = setup.ctx, setup.plan["sustained_s"]
    rate = SUSTAINED_X * setup.capacity
    specs = {
        "high": gateway.spec({"Authorization": f"Bearer {secrets['high']}"}),
        "normal": gateway.spec({"Authorization": f"Bearer {secrets['normal']}"}),
    }
    classes = ["high" if i % HIGH_EVERY == 0 else "normal" for i in range(round(rate * seconds))]
    requests = [(i / rate, specs[c], PATIENCE + GRACE) for i, c in enumerate(classes)]
    ctx.log(f"[admission] sustained: {len(requests)} requests at {rate:.1f}/s for {seconds:g}s")
    fake_reset(gateway.fake.port)
    cpu = -procs.cpu_seconds(gateway.proc.tree())
    sampler = Sampler({"fake": gateway.fake.port}, {"nobusy": gateway.port}, interval=0.5)
    lags: list[float] = []
    sents = run_open(requests, cutoff=seconds + 2.0, on_start=sampler.start, lags=lags)
    samples = sampler.stop()
    cpu += procs.cpu_seconds(gateway.proc.tree())
    stats = fake_stats(gateway.fake.port)
    recs = [classify(s) for s in sents]
    window = (2.0, seconds)
    out: Result = {
        "rate_per_s": rate,
        "all": summarise(recs, window, setup.capacity),
        "upstream": stats,
        "samples": samples.get("fake", []),
        "nobusy_samples": samples.get("nobusy", []),
        "per_second": per_second(recs, seconds + 2.0),
        "client_loop_lag_ms": pcts([lag * 1000 for lag in lags]),
        "nobusy_cpu_s": cpu,
    }
    for name in ("high", "normal"):
        mine = [r for r, c in zip(recs, classes, strict=True) if c == name]
        out[name] = summarise(mine, window, setup.capacity)
    ctx.log(f"[admission] sustained: {_line(out['all'])}")
    rej = out["all"]["all_rejections_ms"]
    lag = out["client_loop_lag_ms"] or {}
    if rej:
        ctx.log(
            f"[admission]   rejections p50 {rej['p50']:.1f} ms, p99 {rej['p99']:.1f} ms "
            f"(n={rej['n']}); the client's own loop lag p99 {lag.get('p99', 0):.1f} ms"
        )
    high = out["high"]["ttft_ms"]
    if high:
        ctx.log(f"[admission]   high-priority time to first token p99 {high['p99']:.0f} ms")
    _settle(gateway.port, ctx.log)
    return out


def _fair(setup: _Setup, gateway: Gateway, specs: dict[str, LoadSpec]) -> Result:
    """The three normal clients alone, then beside the abuser. The abuser's clients hang up
    when the phase ends; the normal ones get ``FAIR_TAIL_S`` more to finish, and what is not
    answered by then counts as not answered."""
    ctx, seconds = setup.ctx, setup.plan["fair_s"]
    normal_rate = NORMAL_LOAD * setup.capacity / len(FAIR_CLIENTS)
    out: Result = {"normal_rate_per_s": normal_rate, "abuser_rate_per_s": ABUSE_X * normal_rate}
    for phase in ("alone", "abused"):
        lead = setup.plan["fair_lead_s"] if phase == "abused" else 0.0
        end = lead + seconds
        requests: list[tuple[float, LoadSpec, float]] = []
        owners: list[str] = []
        for k, client in enumerate(FAIR_CLIENTS):
            offset = lead + k / (normal_rate * len(FAIR_CLIENTS))
            for i in range(round(normal_rate * seconds)):
                requests.append((offset + i / normal_rate, specs[client], PATIENCE + GRACE))
                owners.append(client)
        if phase == "abused":
            abuse_rate = ABUSE_X * normal_rate
            for i in range(round(abuse_rate * end)):
                requests.append((i / abuse_rate, specs["abuser"], PATIENCE + GRACE))
                owners.append("abuser")
        cutoffs: list[float | None] = [end if o == "abuser" else None for o in owners]
        fake_reset(gateway.fake.port)
        sents = run_open(requests, cutoff=end + FAIR_TAIL_S, cutoffs=cutoffs)
        stats = fake_stats(gateway.fake.port)
        recs = [classify(s) for s in sents]
        window = (lead, end + 1.0)  # goodput while they send (and the last answers end)
        mine: dict[str, list[Result]] = {}
        for rec, owner in zip(recs, owners, strict=True):
            mine.setdefault(owner, []).append(rec)
        normal = [r for c in FAIR_CLIENTS for r in mine[c]]
        result: Result = {
            "normal": summarise(normal, window, setup.capacity, cut_fails=True),
            "per_client": {
                c: summarise(mine[c], window, setup.capacity, cut_fails=True) for c in FAIR_CLIENTS
            },
            "upstream": stats,
        }
        if phase == "abused":
            result["abuser"] = summarise(mine["abuser"], (lead, end), setup.capacity)
        out[phase] = result
        ctx.log(f"[admission] {gateway.name} normal keys {phase}: {_line(result['normal'])}")
        if gateway.name.startswith("nobusy"):
            _settle(gateway.port, ctx.log)
        else:
            time.sleep(1.0)
    return out


def run(ctx: Context) -> Result:
    p = plan(ctx.settings.quick)
    setup = _Setup(ctx, p)
    errors_: dict[str, str] = {}
    # Everything nobusy needs comes up together; LiteLLM is launched once capacity is known,
    # and imports itself while nobusy's bursts run.
    gateways = [_launch_nobusy(ctx, name, extra) for name, extra in NOBUSY_VARIANTS.items()]
    keyed = _launch_nobusy(ctx, "nobusy-keys", NOBUSY_VARIANTS["nobusy"])
    _ready(ctx, [*gateways, keyed])
    capacity = _measure_capacity(setup, gateways[0].fake)
    litellm = _LiteLLMStarter(ctx)
    _warm(gateways)
    burst = _burst(setup, gateways)
    for gateway in gateways:
        ctx.procs.stop(gateway.proc)
        ctx.procs.stop(gateway.fake)

    lite = litellm.join()
    fair: dict[str, Result] = {}
    if lite is None:
        errors_["litellm"] = litellm.error or "LiteLLM did not start"
        ctx.log(f"[admission] {errors_['litellm'].splitlines()[0]}; nobusy alone")
    else:
        _warm([lite])
        burst |= _burst(setup, [lite])
        spec = lite.spec()
        fair["litellm"] = _fair(setup, lite, {c: spec for c in (*FAIR_CLIENTS, "abuser")})
        ctx.procs.stop(lite.proc, timeout=1.0)
        ctx.procs.stop(lite.fake)

    names = {"high": "high", "normal": "normal", "abuser": "normal", "flood": "normal"}
    names |= {c: "normal" for c in FAIR_CLIENTS}
    secrets = _create_keys(keyed.port, names)
    auth = {"Authorization": f"Bearer {secrets['normal']}"}
    _warm([dataclasses.replace(keyed, headers=keyed.headers | auth)])
    sustained = _sustained(setup, keyed, secrets)
    specs = {c: keyed.spec({"Authorization": f"Bearer {secrets[c]}"}) for c in names}
    fair["nobusy"] = _fair(setup, keyed, specs)

    def flood_spec(key: str, patience: float) -> LoadSpec:
        extra = {"Authorization": f"Bearer {secrets[key]}", "x-nobusy-max-wait": f"{patience:g}"}
        return keyed.spec(extra)

    floods = admission_floods.run(
        setup.capacity, p["flood_s"], flood_spec, lambda: _settle(keyed.port, ctx.log), ctx.log
    )
    return {
        "plan": p,
        "capacity": capacity,
        "fake": {"slots": SLOTS, "tokens": TOKENS, "chunk_delay_s": CHUNK_DELAY},
        "patience_s": PATIENCE,
        "grace_s": GRACE,
        "burst": burst,
        "sustained": sustained,
        "fair": fair,
        "floods": floods,
        "errors": errors_,
        "configs": {g.name: g.config for g in gateways}
        | ({"litellm": lite.config} if lite is not None else {}),
        "litellm_version": procs.LITELLM_VERSION,
    }


def _render(result: Result, img: Path) -> str:
    floods = admission_floods.render(result)
    return render(result, img) + (f"\n{floods}\n" if floods else "")


SUITE = Suite(
    name="admission",
    title="Admission under overload: bursts, sustained overload, priorities and fairness",
    run=run,
    render=_render,
    goals=lambda result: goals(result) + admission_floods.goals(result),
)
