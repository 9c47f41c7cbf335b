"""Many replicas, one truth (issue 13): three ``nobusy serve`` replicas on one Redis behind
nginx, on loopback, the fake upstreams behind them (``replicas_fleet``).

1. *Exact limits*: a key with ``rpm``, a key with ``tpm`` and an upstream's ``max_concurrency``
   (and its tokens per minute, where the build has such a setting), each driven at 3× through
   the balancer at once; then the same with the replicas restarted without ``state`` (each
   enforces its own: the baseline ratio).
2. *Quota*: a key with ``quota_tokens`` driven hard by closed-loop clients through all replicas.
3. *Admission*: the admission suite's 3× burst on a 4-slot upstream and its abusive key beside
   three normal keys, through the fleet.
4. *Cost of sharing*: added latency of Redis state against local state on one replica, in
   alternating rounds; Redis round trips per request; throughput through nginx to 1 and 3
   replicas.
5. *Faults* (``replicas_faults``): Redis stopped; one replica killed with SIGKILL; PostgreSQL
   stopped (when the build has ``store``); a rolling restart (SIGTERM, drain, start, one
   replica at a time). Then every answered request's id is looked up in the usage table.

The figures and the page are ``replicas_report``'s.
"""

from __future__ import annotations

from dataclasses import replace

from bench import procs
from bench.loadgen import LoadSpec, run_load, run_open
from bench.suites import (
    admission,
    replicas_cost,
    replicas_faults,
    replicas_fleet,
    replicas_litellm,
)
from bench.suites.admission_report import ABUSE_X, PATIENCE, plan
from bench.suites.base import Context, Result, Suite
from bench.suites.replicas_fleet import REPLICAS, UPSTREAM_SLOTS, Fleet, request_spec
from bench.suites.replicas_report import count, goals, outcome, render
from nobusy.admission.limits import estimate_tokens

__all__ = ["SUITE"]

FAIR_KEYS = (*admission.FAIR_CLIENTS, "abuser")
BIG = "1000000000"  # a limit never reached: the key's counters are kept, so Redis is on the path


def scale(quick: bool) -> Result:
    """The run's lengths and limits; ``--quick`` shortens the runs and scales the limits."""
    if quick:
        return {"limits_s": 12.0, "rpm": 120, "tpm": 4_000, "quota": 3_000, "quota_clients": 12,
                "redis_down_s": 4.0, "pg_down_s": 5.0, "fault_lead_s": 3.0, "kill_tail_s": 6.0,
                "restart_load_s": 25.0, "cost_requests": 600}  # fmt: skip
    return {"limits_s": 60.0, "rpm": 600, "tpm": 20_000, "quota": 20_000, "quota_clients": 24,
            "redis_down_s": 10.0, "pg_down_s": 30.0, "fault_lead_s": 5.0, "kill_tail_s": 10.0,
            "restart_load_s": 30.0, "cost_requests": 3_000}  # fmt: skip


def _fake_stats(fleet: Fleet, name: str) -> Result:
    return admission.fake_stats(fleet.fakes[name].port)


# --- 1. exact limits -----------------------------------------------------------------------


def limits(ctx: Context, fleet: Fleet, lb: procs.Proc, keys: dict[str, str], s: Result) -> Result:
    """The rpm key, the tpm key and the narrow upstream, each at 3× its limit, at once."""
    seconds = s["limits_s"] - 0.5  # a request counts for 60 s: all sends inside one window
    rpm_rate = 3 * s["rpm"] / s["limits_s"]
    per_answer = 1 + ctx.settings.tokens  # the fake's usage: 1 prompt word + its chunks
    tpm_rate = 3 * s["tpm"] / per_answer / s["limits_s"]
    narrow_rate = 3 * UPSTREAM_SLOTS / 0.5  # its answers take ~0.5 s
    wait = {"x-nobusy-max-wait": "2"}
    groups: dict[str, tuple[float, LoadSpec]] = {
        "rpm": (rpm_rate, request_spec(lb.port, keys["rpm"], "fast", False)),
        "tpm": (tpm_rate, request_spec(lb.port, keys["tpm"], "fast", False, max_tokens=20)),
        "narrow": (narrow_rate, replace(
            request_spec(lb.port, keys["open"], "narrow", True),
            headers={"Authorization": f"Bearer {keys['open']}", **wait})),
    }  # fmt: skip
    if fleet.features.upstream_tpm:
        metered_rate = 3 * fleet.upstream_tpm / per_answer / s["limits_s"]
        metered = request_spec(lb.port, keys["open"], "metered", False)
        groups["metered"] = (metered_rate, replace(metered, headers=metered.headers | wait))
    requests: list[tuple[float, LoadSpec, float]] = []
    owners: list[str] = []
    for name, (rate, spec) in groups.items():
        # A request that queues may be admitted up to its max wait after it is sent: the
        # queueing groups stop sending that much earlier, so every admission falls inside one
        # window (an admission 61 s after the first finds the first ones' tokens gone).
        queues = "x-nobusy-max-wait" in spec.headers
        n = int(rate * (seconds - (float(wait["x-nobusy-max-wait"]) if queues else 0.0)))
        requests += [(i / rate, spec, 15.0) for i in range(n)]
        owners += [name] * n
    mode = "shared" if fleet.shared else "local"
    ctx.log(f"[replicas] limits ({mode}): {len(requests)} requests over {seconds:g}s")
    admission.fake_reset(fleet.fakes["narrow"].port)
    outs = [outcome(x) for x in run_open(requests)]
    out: Result = {"seconds": seconds}
    for name in groups:
        out[name] = count([o for o, w in zip(outs, owners, strict=True) if w == name])
    out["rpm"] |= {"limit": s["rpm"], "rate_per_s": rpm_rate}
    out["tpm"] |= {"limit": s["tpm"], "rate_per_s": tpm_rate}
    stats = _fake_stats(fleet, "narrow")
    out["narrow"] |= {"limit": UPSTREAM_SLOTS, "rate_per_s": narrow_rate,
                      "max_in_flight": stats.get("max_in_flight"), "upstream": stats}  # fmt: skip
    if "metered" in out:
        out["metered"] |= {"limit": fleet.upstream_tpm}
    ctx.log(
        f"[replicas] limits ({mode}): rpm {out['rpm']['answered']}/{s['rpm']}, "
        f"tpm {out['tpm']['tokens']}/{s['tpm']}, upstream max in flight "
        f"{stats.get('max_in_flight')}/{UPSTREAM_SLOTS}"
    )
    return out


# --- 2. quota --------------------------------------------------------------------------------


def quota(ctx: Context, fleet: Fleet, lb: procs.Proc, secret: str, s: Result) -> Result:
    clients = s["quota_clients"]
    spec = request_spec(lb.port, secret, "fast", False, max_tokens=ctx.settings.tokens)
    per_answer = 1 + ctx.settings.tokens
    n = 3 * s["quota"] // per_answer
    result = run_load(spec, clients, requests=n, keep_records=True)
    answered = sum(1 for r in result.records if r.status == 200)
    used = answered * per_answer
    reserve = estimate_tokens(len(spec.body), ctx.settings.tokens)
    out = {"quota": s["quota"], "clients": clients, "sent": n, "answered": answered,
           "tokens_per_answer": per_answer, "used": used, "overspend": max(0, used - s["quota"]),
           "reserve_per_request": reserve, "bound": clients * reserve,
           "statuses": result.statuses}  # fmt: skip
    ctx.log(f"[replicas] quota: {used} tokens used of {s['quota']}, bound {out['bound']}")
    return out


# --- 3. admission across replicas --------------------------------------------------------------


def admission_runs(
    ctx: Context, fleet: Fleet, lb: procs.Proc, keys: dict[str, str], fair: bool = True
) -> Result:
    setup = admission._Setup(ctx, plan(ctx.settings.quick))
    capacity = admission._measure_capacity(setup, fleet.fakes["slots"])
    headers = {"x-nobusy-max-wait": f"{PATIENCE:g}", "Authorization": f"Bearer {keys['open']}"}
    gateway = admission.Gateway("fleet", lb.port, fleet.fakes["slots"], fleet.replica(0),
                                headers, fleet.config(0))  # fmt: skip
    admission._warm([gateway])
    burst = admission._burst(setup, [gateway])["fleet"]
    drop = {"per_second", "samples", "nobusy_samples"}
    if not fair:
        return {"capacity": capacity, "burst": {k: v for k, v in burst.items() if k not in drop}}
    specs = {k: gateway.spec({"Authorization": f"Bearer {keys[k]}"}) for k in FAIR_KEYS}
    fair = admission._fair(setup, gateway, specs)
    return {"capacity": capacity, "burst": {k: v for k, v in burst.items() if k not in drop},
            "fair": fair, "abuse_x": ABUSE_X}  # fmt: skip


# --- the run -----------------------------------------------------------------------------


def _keys(fleet: Fleet, s: Result) -> dict[str, str]:
    keys = {"rpm": ["--rpm", str(s["rpm"])], "tpm": ["--tpm", str(s["tpm"])],
            "quota": ["--quota-tokens", str(s["quota"])],
            "lease": ["--max-concurrency", str(replicas_faults.LEASE_SLOTS)],
            "cost": ["--rpm", BIG, "--tpm", BIG], "open": []}  # fmt: skip
    keys |= {name: [] for name in FAIR_KEYS}
    return fleet.make_keys(keys)


def run(ctx: Context) -> Result:
    s = scale(ctx.settings.quick)
    if replicas_fleet.nginx_binary() is None:
        raise RuntimeError("nginx is missing: run `bash scripts/install-lb.sh` (as root)")
    feats = replicas_fleet.features()
    ctx.log(f"[replicas] this build: {feats}")
    fleet = Fleet(ctx, feats)
    fleet.upstream_tpm = s["tpm"]
    try:
        return _run(ctx, fleet, s)
    finally:
        fleet.close()


def _run(ctx: Context, fleet: Fleet, s: Result) -> Result:
    keys = _keys(fleet, s)
    fleet.start_all(shared=True)
    lb = fleet.start_lb("lb", list(range(REPLICAS)))
    out: Result = {"scale": s, "features": vars(fleet.features), "replicas": REPLICAS}
    out["nginx_next_upstream"] = replicas_fleet.NEXT_UPSTREAM
    out["limits"] = {"shared": limits(ctx, fleet, lb, keys, s)}
    out["quota"] = quota(ctx, fleet, lb, keys["quota"], s)
    out["admission"] = admission_runs(ctx, fleet, lb, keys)
    out["cost"] = replicas_cost.cost(ctx, fleet, keys, s["cost_requests"])
    faults: Result = {"redis": replicas_faults.redis_down(ctx, fleet, lb, keys["cost"], s)}
    faults["kill"] = replicas_faults.kill(ctx, fleet, lb, keys, s)
    if fleet.store_url is not None:
        faults["postgres"] = replicas_faults.postgres_down(ctx, fleet, lb, keys["cost"], s)
    else:
        why = fleet.features.postgres or "no `store` setting"
        faults["postgres"] = {"unavailable": f"not available on this build ({why})"}
    faults["rolling"] = replicas_faults.rolling(ctx, fleet, lb, keys["open"], s)
    fleet.stop_all()  # flushes the usage rows of the survivors
    try:
        logged: set[str] | None = fleet.usage_ids()
    except Exception as exc:  # a store whose table differs: say so, keep the other figures
        logged = None
        out["usage_error"] = f"{type(exc).__name__}: {exc}"
        ctx.log(f"[replicas] cannot read the usage table: {out['usage_error']}")
    for name in ("redis", "kill", "postgres", "rolling"):
        ids = faults[name].pop("ids", None)
        if ids is not None and logged is not None:
            missing = len([i for i in ids if i not in logged])
            faults[name]["usage"] = {"answered": len(ids), "missing": missing}
    out["faults"] = faults
    out["usage_store"] = "PostgreSQL" if fleet.store_url else "SQLite, one per replica"
    # The baseline: the same replicas without Redis, each enforcing its own limits.
    fleet.start_all(shared=False)
    out["limits"]["local"] = limits(ctx, fleet, lb, keys, s)
    fleet.stop_all()
    # LiteLLM's three proxies on the same Redis, its deployment at the same tokens/min.
    seconds = s["limits_s"] - 0.5
    rate = 3 * s["tpm"] / (1 + ctx.settings.tokens) / s["limits_s"]
    out["limits"]["litellm"] = replicas_litellm.run(ctx, fleet, s["tpm"], seconds, rate)
    return out


SUITE = Suite(
    name="replicas",
    title="Replicas: three behind nginx on one Redis, exact limits, faults, cost of sharing",
    run=run,
    render=render,
    goals=goals,
)


# --- one scenario alone, while working on it ---------------------------------------------------

PARTS = ("burst", "cost", "limits")


def part(ctx: Context, name: str) -> Result:
    """Only the scenario ``name`` (of ``PARTS``), at its full size unless ``--quick``: the
    fleet started as ``run`` starts it; nothing is saved or published."""
    s = scale(ctx.settings.quick)
    fleet = Fleet(ctx, replicas_fleet.features())
    fleet.upstream_tpm = s["tpm"]
    try:
        keys = _keys(fleet, s)
        fleet.start_all(shared=True)
        lb = fleet.start_lb("lb", list(range(REPLICAS)))
        if name == "burst":
            return admission_runs(ctx, fleet, lb, keys, fair=False)
        if name == "cost":
            return replicas_cost.cost(ctx, fleet, keys, s["cost_requests"])
        return limits(ctx, fleet, lb, keys, s)
    finally:
        fleet.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.suites.replicas {burst,cost,limits} [--quick]``: one scenario, its
    figures printed as JSON."""
    import argparse
    import json
    import sys
    import time

    from bench import procs as bench_procs
    from bench.suites.base import RunSettings

    parser = argparse.ArgumentParser(prog="python -m bench.suites.replicas")
    parser.add_argument("part", choices=PARTS)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"{time.monotonic() - t0:6.1f}s {message}", file=sys.stderr, flush=True)

    processes = bench_procs.Processes(log)
    ctx = Context(RunSettings.make(args.quick), processes, log)
    try:
        print(json.dumps(part(ctx, args.part), indent=1, default=str))
    finally:
        processes.stop_all()


if __name__ == "__main__":
    main()
