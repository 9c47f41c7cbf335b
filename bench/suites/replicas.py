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
   alternating rounds; Redis commands per request; throughput through nginx to 1 and 3 replicas.
5. *Faults*: Redis stopped; one replica killed with SIGKILL; PostgreSQL stopped (when the build
   has ``store``); a rolling restart (SIGTERM, drain, start, one replica at a time). Then every
   answered request's id is looked up in the usage table.

The figures and the page are ``replicas_report``'s.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bench import procs
from bench.loadgen import LoadSpec, Sent, chat_body, run_load, run_open
from bench.suites import admission, replicas_fleet
from bench.suites.admission_report import ABUSE_X, PATIENCE, plan
from bench.suites.base import Context, Endpoint, Result, Suite, aggregate, run_rounds
from bench.suites.replicas_fleet import REPLICAS, UPSTREAM_SLOTS, Fleet
from bench.suites.replicas_report import goals, render
from nobusy.admission.limits import estimate_tokens

__all__ = ["SUITE"]

FAIR_KEYS = (*admission.FAIR_CLIENTS, "abuser")
BIG = "1000000000"  # a limit never reached: the key's counters are kept, so Redis is on the path


def scale(quick: bool) -> Result:
    """The run's lengths and limits; ``--quick`` shortens the runs and scales the limits."""
    if quick:
        return {"limits_s": 12.0, "rpm": 120, "tpm": 4_000, "quota": 3_000, "quota_clients": 12,
                "redis_down_s": 4.0, "pg_down_s": 5.0, "fault_lead_s": 3.0, "kill_tail_s": 6.0,
                "restart_load_s": 30.0, "cost_requests": 600}  # fmt: skip
    return {"limits_s": 60.0, "rpm": 600, "tpm": 20_000, "quota": 20_000, "quota_clients": 24,
            "redis_down_s": 10.0, "pg_down_s": 30.0, "fault_lead_s": 5.0, "kill_tail_s": 10.0,
            "restart_load_s": 60.0, "cost_requests": 3_000}  # fmt: skip


def _spec(port: int, secret: str, model: str, stream: bool, **extra: Any) -> LoadSpec:
    body = json.dumps(chat_body(model, stream, "Hello", **extra)).encode()
    return LoadSpec(port, body, stream, {"Authorization": f"Bearer {secret}"})


def outcome(sent: Sent) -> Result:
    """One request as its client saw it: ``answered`` (whole), ``broken`` (a 200 stream that
    ended without ``[DONE]`` or with an error event), ``429``, ``5xx``, ``failed``, ``cut``."""
    body = sent.body
    out: Result = {"status": sent.status, "id": sent.headers.get("x-request-id"), "tokens": 0}
    if sent.cut:
        return out | {"kind": "cut"}
    if sent.status == 200 and sent.complete:
        if body.startswith(b"data:") or b"\ndata:" in body:
            whole = b"data: [DONE]" in body and b'"error"' not in body
            return out | {"kind": "answered" if whole else "broken"}
        try:
            tokens = int(json.loads(body)["usage"]["total_tokens"])
        except (ValueError, KeyError, TypeError):
            return out | {"kind": "broken"}
        return out | {"kind": "answered", "tokens": tokens}
    if sent.status == 200:
        return out | {"kind": "broken"}
    if sent.status == 429:
        return out | {"kind": "429"}
    if sent.status >= 500:
        return out | {"kind": "5xx"}
    return out | {"kind": "failed", "error": sent.error}


def count(outs: list[Result]) -> Result:
    kinds: dict[str, int] = {}
    for o in outs:
        kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
    answered = kinds.get("answered", 0)
    decided = len(outs) - kinds.get("cut", 0)
    return {"sent": len(outs), "kinds": kinds, "answered": answered,
            "answered_share": answered / decided if decided else None,
            "tokens": sum(o["tokens"] for o in outs if o["kind"] == "answered"),
            "client_5xx": kinds.get("5xx", 0), "broken": kinds.get("broken", 0)}  # fmt: skip


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
        "rpm": (rpm_rate, _spec(lb.port, keys["rpm"], "fast", False)),
        "tpm": (tpm_rate, _spec(lb.port, keys["tpm"], "fast", False, max_tokens=20)),
        "narrow": (narrow_rate, replace(
            _spec(lb.port, keys["open"], "narrow", True),
            headers={"Authorization": f"Bearer {keys['open']}", **wait})),
    }  # fmt: skip
    if fleet.features.upstream_tpm:
        metered_rate = 3 * fleet.upstream_tpm / per_answer / s["limits_s"]
        groups["metered"] = (metered_rate, _spec(lb.port, keys["open"], "metered", False))
    requests: list[tuple[float, LoadSpec, float]] = []
    owners: list[str] = []
    for name, (rate, spec) in groups.items():
        n = int(rate * seconds)
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
    spec = _spec(lb.port, secret, "fast", False, max_tokens=ctx.settings.tokens)
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


def admission_runs(ctx: Context, fleet: Fleet, lb: procs.Proc, keys: dict[str, str]) -> Result:
    setup = admission._Setup(ctx, plan(ctx.settings.quick))
    capacity = admission._measure_capacity(setup, fleet.fakes["slots"])
    headers = {"x-nobusy-max-wait": f"{PATIENCE:g}", "Authorization": f"Bearer {keys['open']}"}
    gateway = admission.Gateway("fleet", lb.port, fleet.fakes["slots"], fleet.replica(0),
                                headers, fleet.config(0))  # fmt: skip
    admission._warm([gateway])
    burst = admission._burst(setup, [gateway])["fleet"]
    specs = {k: gateway.spec({"Authorization": f"Bearer {keys[k]}"}) for k in FAIR_KEYS}
    fair = admission._fair(setup, gateway, specs)
    drop = {"per_second", "samples", "nobusy_samples"}
    return {"capacity": capacity, "burst": {k: v for k, v in burst.items() if k not in drop},
            "fair": fair, "abuse_x": ABUSE_X}  # fmt: skip


# --- 4. cost of sharing ----------------------------------------------------------------------


def cost(ctx: Context, fleet: Fleet, secret: str, s: Result) -> Result:
    keyed = replace(ctx, key=secret)
    solo = fleet.start(REPLICAS)  # the same keys, no `state`: local counters
    fake = fleet.fakes["fast"]
    shared = fleet.replica(0)
    endpoints = [
        Endpoint("local state", solo.port, "fast", gateway=solo, upstream=fake),
        Endpoint("Redis state", shared.port, "fast", gateway=shared, upstream=fake),
    ]
    runs = run_rounds(keyed, "replicas", endpoints, [(False, 1)])
    latency = aggregate(runs, baseline="local state", reference="local state")
    fleet.ctx.procs.stop(solo)
    # Redis round trips per request: one replica, a counted run under MONITOR; the idle
    # replicas' heartbeats are counted first, for as long, and taken off.
    monitor = fleet.monitor()
    try:
        time.sleep(0.5)
        idle_from, t0 = monitor.counts(), time.monotonic()
        time.sleep(3.0)
        idle_to, t1 = monitor.counts(), time.monotonic()
        spec = _spec(shared.port, secret, "fast", False)
        started = time.monotonic()
        load = run_load(spec, 8, requests=s["cost_requests"])
        time.sleep(0.5)  # the last reconciliations
        after, elapsed = monitor.counts(), time.monotonic() - started
    finally:
        monitor.close()
    done = load.completed
    per_request: Result = {}
    for kind in (0, 1):  # 0: sent by clients, 1: run inside scripts
        idle_rate = {k: (idle_to[kind][k] - idle_from[kind][k]) / (t1 - t0) for k in idle_to[kind]}
        per = (
            {
                k: max(
                    0.0,
                    (after[kind][k] - idle_to[kind][k] - idle_rate.get(k, 0.0) * elapsed) / done,
                )
                for k in after[kind]
            }
            if done
            else {}
        )
        # Two decimals: the heartbeats taken off are a rate, not the exact count of the run.
        per = {k: round(v, 2) for k, v in per.items() if v >= 0.005}
        total = round(sum(per.values()), 2)
        per_request["sent" if kind == 0 else "scripted"] = per | {"total": total}
    ctx.log(
        f"[replicas] Redis per request: {per_request['sent']['total']:.2f} commands sent, "
        f"{per_request['scripted']['total']:.2f} run by scripts"
    )
    # Throughput: nginx to one replica against nginx to all three, alternating rounds.
    one = fleet.start_lb("lb-one", [0])
    three = fleet.lbs[0]
    through = [
        Endpoint("1 replica", one.port, "fast", gateway=fleet.replica(0), upstream=fake),
        Endpoint(f"{REPLICAS} replicas", three.port, "fast", gateway=three, upstream=fake),
    ]
    scale_runs = run_rounds(keyed, "replicas", through, [(False, 32)])
    throughput = aggregate(scale_runs, baseline=None, reference="1 replica")
    fleet.ctx.procs.stop(one)
    return {"latency": latency, "latency_runs": runs, "redis_per_request": per_request,
            "counted_requests": done,
            "counted_errors": load.errors, "throughput": throughput}  # fmt: skip


# --- 5. faults -------------------------------------------------------------------------------


class Background:
    """An open-loop load in a thread, so that this thread can stop and start processes (a
    child started from another thread would die with it: PR_SET_PDEATHSIG)."""

    def __init__(self, requests: list[tuple[float, LoadSpec, float]]) -> None:
        self.requests, self.sents = requests, []
        self.t0 = 0.0
        self.thread = threading.Thread(target=self._run, name="replicas-load", daemon=True)

    def _run(self) -> None:
        self.sents = run_open(self.requests, on_start=self._mark)

    def _mark(self) -> None:
        self.t0 = time.monotonic()

    def __enter__(self) -> Background:
        self.thread.start()
        while not self.t0:
            time.sleep(0.01)
        return self

    def at(self, seconds: float) -> None:
        """Sleep until ``seconds`` after the load began."""
        time.sleep(max(0.0, self.t0 + seconds - time.monotonic()))

    def __exit__(self, *exc: object) -> None:
        self.thread.join()

    def outcomes(self) -> list[tuple[float, Result]]:
        return [(x.sent_at, outcome(x)) for x in self.sents]


def _steady(spec: LoadSpec, rate: float, seconds: float) -> list[tuple[float, LoadSpec, float]]:
    return [(i / rate, spec, 30.0) for i in range(int(rate * seconds))]


def _shared_again(fleet: Fleet, limit: float = 30.0) -> float | None:
    """Seconds until every replica says its key limits are shared again."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        texts = []
        for proc in fleet.procs[:REPLICAS]:
            if proc is not None:
                status, body = procs.http_call(proc.port, "GET", "/metrics", timeout=2)
                texts.append(body.decode() if status == 200 else "")
        if all("nobusy_state_shared 1.0" in t for t in texts):
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def redis_down(ctx: Context, fleet: Fleet, lb: procs.Proc, secret: str, s: Result) -> Result:
    lead, down = s["fault_lead_s"], s["redis_down_s"]
    spec = _spec(lb.port, secret, "fast", False)
    with Background(_steady(spec, 20.0, 2 * lead + down)) as load:
        load.at(lead)
        fleet.stop_redis()
        load.at(lead + down)
        fleet.start_redis()
        back = _shared_again(fleet)
    outs = load.outcomes()
    during = count([o for t, o in outs if lead <= t < lead + down])
    ctx.log(f"[replicas] Redis down {down:g}s: {count([o for _, o in outs])['kinds']}")
    return {"down_s": down, "all": count([o for _, o in outs]), "during": during,
            "shared_again_s": back, "ids": _ids(outs)}  # fmt: skip


def _ids(outs: list[tuple[float, Result]]) -> list[str]:
    return [o["id"] for _, o in outs if o["kind"] == "answered" and o["id"]]


def _until_free(
    probes: dict[str, Callable[[], int]], since: float, limit: float
) -> tuple[dict[str, float | None], dict[str, list[int]]]:
    """Each probe every 0.25 s until it answers 200: seconds from ``since`` to that 200 (None:
    not within ``limit``), and the statuses each saw."""
    back: dict[str, float | None] = {name: None for name in probes}
    seen: dict[str, list[int]] = {name: [] for name in probes}
    while time.monotonic() - since < limit and any(v is None for v in back.values()):
        for name, probe in probes.items():
            if back[name] is None:
                status = probe()
                seen[name].append(status)
                if status == 200:
                    back[name] = time.monotonic() - since
        time.sleep(0.25)
    return back, seen


def kill(ctx: Context, fleet: Fleet, lb: procs.Proc, keys: dict[str, str], s: Result) -> Result:
    """Load through nginx; replica 2 holds every slot of the lease key (and of the narrow
    upstream) when it gets SIGKILL; probes on replica 1 time the slots' return."""
    lead, tail = s["fault_lead_s"], s["kill_tail_s"]
    victim, survivor = fleet.replica(1), fleet.replica(0)
    load_spec = _spec(lb.port, keys["open"], "long", True)
    holders = [(0.0, _spec(victim.port, keys["lease"], "hold", False), 60.0)] * LEASE_SLOTS
    holders += [
        (0.0, _spec(victim.port, keys["open"], "narrow-hold", False), 60.0)
    ] * UPSTREAM_SLOTS
    with Background(_steady(load_spec, 6.0, lead + tail)) as load:
        held = threading.Thread(target=run_open, args=(holders,), daemon=True)
        load.at(lead - 1.0)
        held.start()
        lease_spec = {"model": "fast", "messages": [{"role": "user", "content": "Hello"}]}
        narrow = {**lease_spec, "model": "narrow"}
        probes = {
            "key": lambda: procs.http_json(
                survivor.port, lease_spec, {"Authorization": f"Bearer {keys['lease']}"}
            )[0],
            "upstream": lambda: procs.http_json(
                survivor.port,
                narrow,
                {"Authorization": f"Bearer {keys['open']}", "x-nobusy-max-wait": "0.2"},
            )[0],
        }
        load.at(lead - 0.2)
        # Every slot is held on the victim: the survivor refuses the key (429), and the
        # upstream too where its slots are shared (else it answers from slots of its own).
        held_before = {name: probe() for name, probe in probes.items()}
        load.at(lead)
        victim.popen.kill()
        back, seen = _until_free(probes, time.monotonic(), 30.0)
    held.join(60)
    outs = load.outcomes()
    after = count([o for t, o in outs if t >= lead + 0.5])
    fleet.start(1)  # back, same port and data dir, for what follows
    ctx.log(f"[replicas] kill -9: after it {after['kinds']}; held {held_before}, back {back}")
    return {"all": count([o for _, o in outs]), "after_kill": after,
            "held_before": held_before, "slots_back_s": back,
            "probe_statuses": {k: v[:40] for k, v in seen.items()}, "ids": _ids(outs)}  # fmt: skip


LEASE_SLOTS = 4  # the lease key's max_concurrency: all held by the replica that is killed


def postgres_down(ctx: Context, fleet: Fleet, lb: procs.Proc, secret: str, s: Result) -> Result:
    lead, down = s["fault_lead_s"], s["pg_down_s"]
    spec = _spec(lb.port, secret, "fast", False)
    with Background(_steady(spec, 20.0, 2 * lead + down)) as load:
        load.at(lead)
        fleet.stop_postgres()
        load.at(lead + down)
        fleet.start_postgres_again()
    outs = load.outcomes()
    ctx.log(f"[replicas] PostgreSQL down {down:g}s: {count([o for _, o in outs])['kinds']}")
    return {"down_s": down, "all": count([o for _, o in outs]), "ids": _ids(outs)}


def rolling(ctx: Context, fleet: Fleet, lb: procs.Proc, secret: str, s: Result) -> Result:
    """SIGTERM one replica, wait for its drain and exit, start it again; then the next."""
    spec = _spec(lb.port, secret, "long", True)
    steps: list[Result] = []
    with Background(_steady(spec, 6.0, s["restart_load_s"])) as load:
        load.at(3.0)
        for index in range(REPLICAS):
            proc = fleet.replica(index)
            began = time.monotonic()
            proc.popen.send_signal(signal.SIGTERM)
            proc.popen.wait(replicas_fleet.DRAIN_TIMEOUT + 10)
            drained = time.monotonic() - began
            fleet.ctx.procs.stop(proc)
            fleet.start(index)
            steps.append({"replica": index + 1, "drain_s": drained,
                          "exit_code": proc.popen.returncode,
                          "back_s": time.monotonic() - began})  # fmt: skip
        finished = time.monotonic() - load.t0
    outs = [(t, o) for t, o in load.outcomes() if t < finished]
    result = count([o for _, o in outs])
    ctx.log(f"[replicas] rolling restart in {finished:.0f}s: {result['kinds']}")
    return {"steps": steps, "during": result, "restart_s": finished, "ids": _ids(outs)}


# --- the run -----------------------------------------------------------------------------


def _keys(fleet: Fleet, s: Result) -> dict[str, str]:
    keys = {"rpm": ["--rpm", str(s["rpm"])], "tpm": ["--tpm", str(s["tpm"])],
            "quota": ["--quota-tokens", str(s["quota"])],
            "lease": ["--max-concurrency", str(LEASE_SLOTS)],
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
    out["cost"] = cost(ctx, fleet, keys["cost"], s)
    faults: Result = {"redis": redis_down(ctx, fleet, lb, keys["cost"], s)}
    faults["kill"] = kill(ctx, fleet, lb, keys, s)
    if fleet.store_url is not None:
        faults["postgres"] = postgres_down(ctx, fleet, lb, keys["cost"], s)
    else:
        why = fleet.features.postgres or "no `store` setting"
        faults["postgres"] = {"unavailable": f"not available on this build ({why})"}
    faults["rolling"] = rolling(ctx, fleet, lb, keys["open"], s)
    fleet.stop_all()  # flushes the usage rows of the survivors
    logged = fleet.usage_ids()
    for name in ("redis", "kill", "postgres", "rolling"):
        ids = faults[name].pop("ids", None)
        if ids is not None:
            missing = len([i for i in ids if i not in logged])
            faults[name]["usage"] = {"answered": len(ids), "missing": missing}
    out["faults"] = faults
    out["usage_store"] = "PostgreSQL" if fleet.store_url else "SQLite, one per replica"
    # The baseline: the same replicas without Redis, each enforcing its own limits.
    fleet.start_all(shared=False)
    out["limits"]["local"] = limits(ctx, fleet, lb, keys, s)
    fleet.stop_all()
    return out


SUITE = Suite(
    name="replicas",
    title="Replicas: three behind nginx on one Redis, exact limits, faults, cost of sharing",
    run=run,
    render=render,
    goals=goals,
)
