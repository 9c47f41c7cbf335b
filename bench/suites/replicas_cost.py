"""The cost of sharing, part of the ``replicas`` suite: the latency Redis adds to a request (a
key with limits: key admission and a lease; a key without: the lease alone), the round trips
to Redis a request makes before its first byte and in all, and throughput to 1 and 3 replicas.

Round trips are read from Redis's ``MONITOR`` (``replicas_fleet.Monitor``): each ``EVALSHA``
is put down to its script by the SHA1 of the Lua sources of the nobusy under test (every
module-level string that calls ``redis.call`` in its modules that mention Redis), so a renamed
or added script is still named, and one never seen is counted under its SHA.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from bench import procs
from bench.loadgen import chat_body, run_load
from bench.suites.base import Context, Endpoint, Result, aggregate, median, run_rounds
from bench.suites.replicas_fleet import REPLICAS, Fleet, request_spec, served_env

__all__ = ["HOT", "cost", "script_names"]

# The hot path, before the first byte: the key's admission (which also carries the ends of
# earlier requests) and the upstream lease's take. `_TAKE` also gives slots back when no take
# came for 5 ms: its 4th argument (`take`, redis_leases.py) tells the two apart.
HOT = {("_ADMIT", ""): "key admission", ("_TAKE", "1"): "lease take"}
SPLIT = {"_TAKE": 4}
LATER = {("_TAKE", "0"): "lease give-back", ("_DONE", ""): "key done"}
PERIODIC = ("SYNC", "BEAT")  # heartbeats and syncs: by the second, not by the request

_PROBE = """
import hashlib, importlib, importlib.util, json, pkgutil, nobusy
names = {}
for info in sorted(pkgutil.walk_packages(nobusy.__path__, "nobusy."), key=lambda m: m.name):
    spec = importlib.util.find_spec(info.name)
    try:
        source = open(spec.origin).read() if spec and spec.origin else ""
    except OSError:
        continue
    if "redis.call" not in source:
        continue
    module = importlib.import_module(info.name)
    for attr, value in vars(module).items():
        if isinstance(value, str) and "redis.call" in value:
            sha = hashlib.sha1(value.encode()).hexdigest()
            names.setdefault(sha, info.name.rsplit(".", 1)[-1] + "." + attr)
print(json.dumps(names))
"""


def script_names() -> dict[str, str]:
    """``{sha1: "module.NAME"}`` for the Lua scripts of the served nobusy."""
    done = subprocess.run(
        [str(procs.NOBUSY.parent / "python"), "-c", _PROBE],
        capture_output=True,
        text=True,
        env=served_env(),
        check=True,
        cwd=procs.RUN_DIR,
    )
    names: dict[str, str] = json.loads(done.stdout)
    return names


def _attr(name: str) -> str:
    return name.rsplit(".", 1)[-1]


# --- latency -------------------------------------------------------------------------------


def latency(ctx: Context, fleet: Fleet, keys: dict[str, str]) -> Result:
    """Redis state against local state for a key with limits and for one without, request by
    request: one client visits the four paths in turn, each on its keep-alive connection, so
    whatever else the 2 cores do hits all four alike; cut into rounds, the p50 of each path per
    round, and Redis minus local per round."""
    solo = fleet.start(REPLICAS)  # the same keys, no `state`: local counters
    shared = fleet.replica(0)
    paths = [(f"{where}, {kind}", proc.port, keys[key])
             for kind, key in (("rpm", "cost"), ("none", "open"))
             for where, proc in (("local", solo), ("Redis", shared))]  # fmt: skip
    rounds, cycles = (4, 250) if ctx.settings.quick else (10, 600)
    body = json.dumps(chat_body("fast", False)).encode()
    conns = {name: http.client.HTTPConnection(procs.HOST, port, timeout=10)
             for name, port, _ in paths}  # fmt: skip
    samples: dict[str, list[list[float]]] = {name: [] for name, _, _ in paths}
    errors = 0
    try:
        for _ in range(50):  # warm: connections, pools, scripts loaded
            for name, _, secret in paths:
                _call(conns[name], body, secret)
        for number in range(rounds):
            times: dict[str, list[float]] = {name: [] for name, _, _ in paths}
            for cycle in range(cycles):
                shift = (cycle + number) % len(paths)  # who goes first rotates too
                for name, _, secret in paths[shift:] + paths[:shift]:
                    took = _call(conns[name], body, secret)
                    if took is None:
                        errors += 1
                    else:
                        times[name].append(took * 1000)
            for name, values in times.items():
                samples[name].append(values)
            ctx.log(f"[replicas] latency round {number + 1}/{rounds}: " + ", ".join(
                f"{n} {_pct(v, 50):.3f} ms" for n, v in times.items()))  # fmt: skip
    finally:
        for conn in conns.values():
            conn.close()
        fleet.ctx.procs.stop(solo)
    rows = []
    for name, per_round in samples.items():
        every = [v for values in per_round for v in values]
        rows.append({"path": name, "requests": len(every), "p50_ms": _pct(every, 50),
                     "p99_ms": _pct(every, 99),
                     "round_p50_ms": [round(_pct(v, 50), 3) for v in per_round]})  # fmt: skip
    added: Result = {}
    for kind in ("rpm", "none"):
        local, redis = samples[f"local, {kind}"], samples[f"Redis, {kind}"]
        diffs = [_pct(r, 50) - _pct(lo, 50) for r, lo in zip(redis, local, strict=True)]
        added[kind] = {"median_ms": median(diffs), "rounds_ms": [round(d, 3) for d in diffs],
                       "min_ms": min(diffs, default=None),
                       "max_ms": max(diffs, default=None)}  # fmt: skip
    ctx.log(
        f"[replicas] added p50, Redis vs local: key with rpm {_ms(added['rpm'])}, "
        f"key without limits {_ms(added['none'])}"
    )
    return {"rows": rows, "added": added, "rounds": rounds, "cycles": cycles, "errors": errors}


def _call(conn: http.client.HTTPConnection, body: bytes, secret: str) -> float | None:
    """One chat request on a keep-alive connection: seconds to the whole answer, or None."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
    started = time.perf_counter()
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        return None
    took = time.perf_counter() - started
    return took if response.status == 200 else None


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def _ms(part: Result) -> str:
    if part["median_ms"] is None:
        return "—"
    return f"{part['median_ms']:+.3f} ms ({part['min_ms']:+.3f} to {part['max_ms']:+.3f})"


# --- round trips ---------------------------------------------------------------------------


def round_trips(ctx: Context, fleet: Fleet, secret: str, requests: int) -> Result:
    """Per request on one replica, 8 connections: commands sent by kind and script, the idle
    fleet's rate (heartbeats, syncs) counted first, for as long, and taken off."""
    names = script_names()
    split = {sha: SPLIT[_attr(n)] for sha, n in names.items() if _attr(n) in SPLIT}
    monitor = fleet.monitor(split)
    try:
        time.sleep(0.5)
        idle_from, t0 = monitor.counts(), time.monotonic()
        time.sleep(3.0)
        idle_to, t1 = monitor.counts(), time.monotonic()
        spec = request_spec(fleet.replica(0).port, secret, "fast", False)
        started = time.monotonic()
        load = run_load(spec, 8, requests=requests)
        time.sleep(0.5)  # the last ends and give-backs
        after, elapsed = monitor.counts(), time.monotonic() - started
    finally:
        monitor.close()
    done = load.completed
    per = [
        _per_request(idle_from[kind], idle_to[kind], after[kind], t1 - t0, elapsed, done)
        for kind in range(3)  # 0: sent by clients, 1: run inside scripts, 2: scripts called
    ]
    scripts: Result = {}
    hot, later, periodic = 0.0, 0.0, 0.0
    for (sha, flag), n in per[2].items():
        name = names.get(sha, sha[:12])
        attr = (_attr(name), flag)
        label = HOT.get(attr) or LATER.get(attr) or name + (f" ({flag})" if flag else "")
        scripts[label] = round(scripts.get(label, 0.0) + n, 2)
        if attr in HOT:
            hot += n
        elif any(p in attr[0] for p in PERIODIC):
            periodic += n
        else:
            later += n
    sent = {str(k): round(v, 2) for k, v in per[0].items()}
    total = sum(per[0].values()) - periodic  # every command sent, the syncs taken off
    out = {"requests": done, "errors": load.errors, "hot": round(hot, 2),
           "after": round(later, 2), "total": round(total, 2), "scripts": scripts,
           "sent": sent | {"total": round(sum(per[0].values()), 2)},
           "scripted": {str(k): round(v, 2) for k, v in per[1].items()},
           "unnamed": sorted({sha for sha, _ in per[2] if sha not in names})}  # fmt: skip
    ctx.log(f"[replicas] Redis round trips per request: hot path {hot:.2f}, in all {total:.2f}")
    return out


def _per_request(
    idle_from: Mapping[Any, int],
    idle_to: Mapping[Any, int],
    after: Mapping[Any, int],
    idle_s: float,
    elapsed: float,
    done: int,
) -> dict[Any, float]:
    """What the counted run added, per request: the idle rate taken off for its duration."""
    out: dict[Any, float] = {}
    for k, n in after.items():
        idle = (idle_to.get(k, 0) - idle_from.get(k, 0)) / idle_s
        extra = n - idle_to.get(k, 0) - idle * elapsed
        if done and extra / done >= 0.005:
            out[k] = extra / done
    return out


# --- the whole ----------------------------------------------------------------------------


def cost(ctx: Context, fleet: Fleet, keys: dict[str, str], requests: int) -> Result:
    out: Result = {"latency": latency(ctx, fleet, keys)}
    out["redis"] = {"rpm": round_trips(ctx, fleet, keys["cost"], requests),
                    "none": round_trips(ctx, fleet, keys["open"], requests)}  # fmt: skip
    # Throughput: nginx to one replica against nginx to all three, alternating rounds.
    keyed = replace(ctx, key=keys["cost"])
    fake = fleet.fakes["fast"]
    one = fleet.start_lb("lb-one", [0])
    three = fleet.lbs[0]
    through = [
        Endpoint("1 replica", one.port, "fast", gateway=fleet.replica(0), upstream=fake),
        Endpoint(f"{REPLICAS} replicas", three.port, "fast", gateway=three, upstream=fake),
    ]
    try:
        scale_runs = run_rounds(keyed, "replicas", through, [(False, 32)])
    finally:
        fleet.ctx.procs.stop(one)
    out["throughput"] = aggregate(scale_runs, baseline=None, reference="1 replica")
    return out
