"""The ``replicas`` suite's targets (issue 13) and its section of docs/benchmarks.md, from the
figures of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import plots
from bench.loadgen import Sent
from bench.suites.base import Goal, Result, at_least, at_most, fmt, md_table

__all__ = ["count", "goals", "outcome", "render"]

LEASE_TTL_S = 10.0  # a killed replica's slots come back within this (issue 13, "≤ 10 s")
NOT_HERE = (
    "not available on this build: it has no upstream tokens-per-minute setting (only its "
    "max_concurrency)"
)
LITELLM = "LiteLLM 1.106.2"


def _get(row: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(row, dict):
            return None
        row = row.get(key)
    return row


def _off(measured: float | None, limit: float | None) -> float | None:
    """How far from its limit, in % of it."""
    if measured is None or not limit:
        return None
    return abs(measured - limit) / limit * 100


def _ratio(measured: float | None, limit: float | None) -> float | None:
    return None if measured is None or not limit else measured / limit


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100


def _accepted(part: Result | None, name: str) -> float | None:
    """What counts against a limit: answers (rpm), tokens (tpm), most in flight (upstream)."""
    row = _get(part, name)
    if not isinstance(row, dict):
        return None
    if name == "rpm":
        return float(row["answered"])
    if name == "narrow":
        value = row.get("max_in_flight")
        return None if value is None else float(value)
    return float(row["tokens"])


def fair_ratio(result: Result) -> float | None:
    alone = _get(result, "admission", "fair", "alone", "normal", "goodput_per_s")
    abused = _get(result, "admission", "fair", "abused", "normal", "goodput_per_s")
    return None if not alone or abused is None else abused / alone


def goals(result: Result) -> list[Goal]:
    if "crashed" in result:
        return []
    shared = result["limits"]["shared"]
    q = result["quota"]
    burst = _get(result, "admission", "burst")
    faults = result["faults"]
    kill, rolling = faults["kill"], faults["rolling"]
    pg = faults.get("postgres", {})
    held = _get(kill, "held_before", "key") == 429
    out = [
        at_most("Replicas 3×: key rpm, accepted off the limit",
                _off(_accepted(shared, "rpm"), shared["rpm"]["limit"]), 1, "%"),
        at_most("Replicas 3×: key tpm, tokens accepted off the limit",
                _off(_accepted(shared, "tpm"), shared["tpm"]["limit"]), 1, "%"),
        at_most("Replicas 3×: upstream max_concurrency 4, most in flight at the upstream",
                _accepted(shared, "narrow"), float(shared["narrow"]["limit"]), "requests"),
        at_most("Replicas 3×: upstream tokens/min, accepted off the limit",
                _off(_accepted(shared, "metered"), _get(shared, "metered", "limit")), 1, "%",
                NOT_HERE),
        at_most("Replicas: quota overspend (bound: reserved tokens in flight)",
                q["overspend"], float(q["bound"]), "tokens"),
        at_least("Replicas, burst 3×: answered", _pct(_get(burst, "answered_share")), 95, "%"),
        at_most("Replicas, burst 3×: client 5xx", _get(burst, "server_errors"), 0, "errors"),
        at_most("Replicas, burst 3×: upstream calls refused",
                _pct(_get(burst, "upstream_rejected_share")), 5, "%"),
        at_least("Replicas, abuser 20×: normal keys' goodput of the run without it",
                 _pct(fair_ratio(result)), 90, "%"),
        at_least("Replicas, kill -9: answered after the kill",
                 _pct(_get(kill, "after_kill", "answered_share")), 100, "%"),
        at_most("Replicas, kill -9: the key's slots back", _get(kill, "slots_back_s", "key") if held
                else None, LEASE_TTL_S, "s", "the victim did not hold every slot at the kill"),
        at_most("Replicas, kill -9: the upstream's slots back", _get(kill, "slots_back_s",
                "upstream") if _get(kill, "held_before", "upstream") != 200 else None,
                LEASE_TTL_S, "s", "the upstream's slots are per replica on this build (the "
                "survivor admitted a request while the victim held all 4)"),
        at_most("Replicas, kill -9: answered requests missing from usage",
                _get(kill, "usage", "missing"), 0, "requests", result.get("usage_error", "")),
        at_most("Replicas, Redis stopped: client 5xx",
                _get(faults, "redis", "all", "client_5xx"), 0, "errors"),
        at_most("Replicas, PostgreSQL stopped: usage rows lost",
                _get(pg, "usage", "missing"), 0, "rows",
                pg.get("unavailable", result.get("usage_error", ""))),
        at_most("Replicas, rolling restart: broken streams",
                _get(rolling, "during", "broken"), 0, "streams"),
        at_most("Replicas, rolling restart: client errors",
                _errors(_get(rolling, "during")), 0, "errors"),
        at_most("Replicas: added p50, Redis state vs local state (key with rpm)",
                _latency(result), 0.5, "ms"),
        at_most("Replicas: Redis round trips per request, hot path (key with rpm)",
                _get(result, "cost", "redis", "rpm", "hot"), 2, "round trips"),
    ]  # fmt: skip
    return out


def _errors(part: Result | None) -> float | None:
    if not isinstance(part, dict):
        return None
    kinds = part["kinds"]
    return float(sum(v for k, v in kinds.items() if k not in ("answered", "broken", "cut")))


def _latency(result: Result) -> float | None:
    value = _get(result, "cost", "latency", "added", "rpm", "median_ms")
    return None if value is None else float(value)


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


# --- the page --------------------------------------------------------------------------------


LIMITS = (
    ("rpm", "key `rpm`", "requests answered"),
    ("tpm", "key `tpm`", "tokens answered"),
    ("narrow", "upstream `max_concurrency`", "most in flight at the upstream"),
    ("metered", "upstream tokens/min", "tokens answered"),
)


def _limits(result: Result, img: Path) -> str:
    parts = result["limits"]
    body, labels = [], []
    ratios: dict[str, list[float | None]] = {"one Redis": [], "no Redis": []}
    for name, label, what in LIMITS:
        shared = _get(parts, "shared", name)
        if shared is None:
            if name == "metered":
                body.append([label, "—", "—", "—", "—", "—", NOT_HERE])
            continue
        limit = shared["limit"]
        a, b = _accepted(parts["shared"], name), _accepted(parts.get("local"), name)
        ra, rb = _ratio(a, limit), _ratio(b, limit)
        labels.append(label.replace("`", ""))
        ratios["one Redis"].append(ra)
        ratios["no Redis"].append(rb)
        body.append([label, f"{limit:,}", fmt(a, 0), fmt(ra, 3, "×"), fmt(b, 0),
                     fmt(rb, 2, "×"), what])  # fmt: skip
    lite = parts.get("litellm")
    label = f"{LITELLM}, deployment `tpm`"
    if isinstance(lite, dict) and "unavailable" in lite:
        body.append([label, "—", "—", "—", "—", "—", lite["unavailable"]])
    elif isinstance(lite, dict):
        ra = _ratio(float(lite["tokens"]), lite["limit"])
        alone = lite.get("alone") or {}
        rb = _ratio(alone.get("tokens"), lite["limit"])
        labels.append(f"{LITELLM} deployment tpm")
        ratios["one Redis"].append(ra)
        ratios["no Redis"].append(rb)
        body.append([label, f"{lite['limit']:,}", f"{lite['tokens']:,}", fmt(ra, 3, "×"),
                     fmt(alone.get("tokens"), 0), fmt(rb, 2, "×"), "tokens answered (*no Redis*: "
                     "one proxy alone)"])  # fmt: skip
    if labels:
        plots.paired_bars(labels, ratios, "accepted / limit", "Limits through 3 replicas at 3× "
                          "demand", img / "bench-replicas-limits.png", target=1.0)  # fmt: skip
    seconds = parts["shared"]["seconds"]
    intro = (
        f"Each limit driven at 3× through nginx for {seconds:g} s, all at once (open loop: "
        "requests sent on a schedule, each on its own connection). *One Redis*: the replicas "
        "share `state: redis://`; *no Redis*: the same replicas restarted without it, each "
        "enforcing its own limits (the baseline: up to 3×). The upstream's ceiling is the "
        "fake's own count of requests in flight at once (`max_in_flight`), with clients "
        "waiting at most 2 s (`x-nobusy-max-wait`) for a slot. The upstream tokens/min row is "
        "an upstream `tpm` in front of the fast fake, when the build has that setting. "
        f"{LITELLM} in the same run: three LiteLLM proxies (one worker each) behind the same "
        "nginx, on the same Redis (`router_settings`: `redis_host`, `redis_port`, "
        "`routing_strategy: usage-based-routing-v2`, `enable_pre_call_checks: true`), the fast "
        "fake as one deployment with `tpm` at the same limit, driven at the same 3× inside one "
        "calendar minute (LiteLLM counts per `%H-%M` minute), then one of its proxies alone at "
        "the same demand the next minute (in the *no Redis* column: whether the limit holds at "
        "all); its per-key limits need its PostgreSQL (virtual keys), so only the deployment's "
        "limit is compared."
    )
    headers = ["limit", "value", "one Redis", "× limit", "no Redis", "× limit", "counted"]
    table = md_table(headers, body, "lrrrrrl")
    return "\n\n".join([intro, table, "![limits](img/bench-replicas-limits.png)"])


def _quota(q: Result) -> str:
    text = (
        f"A key with `quota_tokens: {q['quota']:,}` driven by {q['clients']} closed-loop "
        f"clients through nginx, {q['sent']:,} requests of {q['tokens_per_answer']} tokens each "
        f"(reserved at admission: {q['reserve_per_request']}). The bound is the reserved tokens "
        f"of the requests that can be in flight at once: {q['clients']} × "
        f"{q['reserve_per_request']} = {q['bound']:,}."
    )
    row = [f"{q['quota']:,}", f"{q['answered']:,}", f"{q['used']:,}", f"{q['overspend']:,}",
           f"{q['bound']:,}", fmt(_ratio(q["used"], q["quota"]), 2, "×")]  # fmt: skip
    headers = ["quota", "answered", "tokens used", "overspend", "bound", "× quota"]
    return text + "\n\n" + md_table(headers, [row], "rrrrrr")


def _admission(result: Result) -> str:
    adm = result["admission"]
    burst, fair = adm["burst"], adm["fair"]
    cap = adm["capacity"]["answers_per_s"]
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(burst["failures"].items())) or "none"
    rows = [
        ["burst 3×: answered", fmt(_pct(burst["answered_share"]), 1, "%")],
        ["burst 3×: client 5xx", str(burst["server_errors"])],
        ["burst 3×: upstream calls refused", fmt(_pct(burst["upstream_rejected_share"]), 1, "%")],
        ["burst 3×: upstream calls per request", fmt(burst["calls_per_request"])],
        ["burst 3×: goodput of capacity", fmt(_pct(burst["goodput_share"]), 1, "%")],
        ["burst 3×: not answered, by what", kinds],
        ["abuser: normal keys' goodput alone", fmt(_get(fair, "alone", "normal", "goodput_per_s"))
         + " answers/s"],
        ["abuser: beside the abuser", fmt(_get(fair, "abused", "normal", "goodput_per_s"))
         + " answers/s"],
        ["abuser: ratio", fmt(_pct(fair_ratio(result)), 1, "%")],
    ]  # fmt: skip
    text = (
        "The admission suite's scenarios through the fleet: its fake upstream with 4 slots "
        f"(measured capacity {cap:.2f} answers/s), `max_concurrency: 4` on every replica, "
        f"arrivals at 3× capacity; then three normal keys at 70% of capacity, alone and "
        f"beside a key sending {adm['abuse_x']}× one normal key's rate."
    )
    return text + "\n\n" + md_table(["figure", "measured"], rows, "lr")


def _faults(result: Result) -> str:
    f = result["faults"]
    r, k, roll, pg = f["redis"], f["kill"], f["rolling"], f["postgres"]
    steps = ", ".join(f"r{s['replica']} drained in {s['drain_s']:.1f} s" for s in roll["steps"])

    def usage(part: Result) -> str:
        u = part.get("usage")
        return "—" if not u else f"{u['missing']} of {u['answered']:,}"

    rows = [
        [f"Redis stopped {r['down_s']:g} s", _kinds(r["all"]), str(r["all"]["client_5xx"]),
         usage(r), f"shared again {fmt(r['shared_again_s'], 1)} s after its restart"],
        ["kill -9 one replica", _kinds(k["all"]), str(k["all"]["client_5xx"]), usage(k),
         f"after the kill {fmt(_pct(k['after_kill']['answered_share']), 1, '%')} answered "
         f"(broken: streams on the killed replica); {_slots(k)}"],
        ["PostgreSQL stopped", "—", "—", "—", pg["unavailable"]] if "unavailable" in pg else
        [f"PostgreSQL stopped {pg['down_s']:g} s", _kinds(pg["all"]),
         str(pg["all"]["client_5xx"]), usage(pg), "rows lost = missing"],
        ["rolling restart", _kinds(roll["during"]), str(roll["during"]["client_5xx"]),
         usage(roll), f"{roll['during']['broken']} broken streams; {steps}"],
    ]  # fmt: skip
    text = (
        "Load through nginx (`proxy_next_upstream " + result["nginx_next_upstream"] + "`) "
        "while a part fails. *Missing*: answered requests (by `x-request-id`) without a row "
        f"in the usage table ({result['usage_store']}), read after the replicas stopped. "
        "kill -9: replica 2 holds every slot of a key with `max_concurrency: 4` and of the "
        "4-slot upstream when it is killed; replica 1 is then asked every 0.25 s until it "
        "admits the key (and then the upstream) again. Rolling restart: SIGTERM, wait for "
        "the drain and exit, start again, then the next replica, under 2 s streams."
    )
    return (
        text
        + "\n\n"
        + md_table(
            ["fault", "outcomes", "client 5xx", "missing from usage", "notes"], rows, "llrrl"
        )
    )


def _slots(kill: Result) -> str:
    """When the victim's slots came back, for the key and for the upstream."""
    held, back = kill["held_before"], kill["slots_back_s"]
    out = []
    for name, what in (("key", "the key's slots"), ("upstream", "the upstream's slots")):
        if held.get(name) == 200:
            out.append(f"{what} were not shared (the survivor admitted a request before the kill)")
        else:
            out.append(f"{what} back after {fmt(back.get(name), 1)} s")
    return "; ".join(out)


def _kinds(part: Result) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(part["kinds"].items()))


KINDS = {"rpm": "key with rpm and tpm", "none": "key without limits"}


def _cost(result: Result) -> str:
    c = result["cost"]
    if "redis" not in c:  # a result file from before the split of hot path and total
        return "Cost of sharing: this result predates the current measurement; run the suite."
    lat = c["latency"]
    rows = []
    for row in lat["rows"]:
        where, _, kind = row["path"].partition(", ")
        added = lat["added"][kind] if where == "Redis" else None
        spread = "—" if added is None else (
            f"{fmt(added['median_ms'], 3)} ({fmt(added['min_ms'], 3)} to "
            f"{fmt(added['max_ms'], 3)})")  # fmt: skip
        rows.append([f"{where} state, {KINDS[kind]}", f"{row['requests']:,}",
                     fmt(row["p50_ms"], 3), fmt(row["p99_ms"]), spread])  # fmt: skip
    latency = (
        "Added latency: one replica with `state: redis://` against one without (the same keys), "
        "measured request by request: one client visits the four paths in turn, each on its "
        f"own keep-alive connection, {lat['cycles']:,} visits a round, {lat['rounds']} rounds "
        "(so whatever else the 2 cores do hits the four alike). The added p50 is the median "
        "over rounds of Redis minus local in the same round; in brackets the lowest and the "
        "highest round. The key with rpm and tpm (limits never reached) is admitted in Redis "
        "and takes the upstream's lease there; the key without limits only takes the lease. "
        "Latencies include the Python client's own time (the same on every path)."
    )
    headers = ["path", "requests", "p50 ms", "p99 ms", "added p50 ms (range over rounds)"]
    latency += "\n\n" + md_table(headers, rows, "lrrrr")
    trips = []
    for kind, part in c["redis"].items():
        scripts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(part["scripts"].items(),
                                                                key=lambda kv: -kv[1]))  # fmt: skip
        trips.append([KINDS[kind], fmt(part["hot"]), fmt(part["after"]), fmt(part["total"]),
                      scripts or "none"])  # fmt: skip
    rpm = c["redis"]["rpm"]
    text = (
        f"Redis round trips: {rpm['requests']:,} requests on one replica (8 connections) under "
        "Redis's `MONITOR`, for each key; the idle fleet's commands (heartbeats, syncs) counted "
        "for 3 s beforehand and taken off at that rate. Each `EVALSHA` is put down to its "
        "script by the SHA1 of the Lua sources of the nobusy under test. *Hot path*: what a "
        "request waits for before its first byte (the key's admission, the lease take); "
        "*after*: what rides after the answer in calls of their own (a key's end rides on "
        "the next admission when one comes within 5 ms, a lease's give-back on the next take); "
        "*in all*: every command sent, syncs taken off (a command sent is at most one round "
        "trip: a pipeline sends several in one)."
    )
    headers = ["key", "hot path", "after", "in all", "scripts called per request"]
    text += "\n\n" + md_table(headers, trips, "lrrrl")
    through = []
    for row in c["throughput"]:
        through.append([f"nginx → {row['path']}, c=32", fmt(row["rps"], 0), fmt(row["p50_ms"]),
                        fmt(row["p99_ms"]), fmt(row["x_reference"], 2, "× 1 replica")])  # fmt: skip
    scale = (
        "Throughput: nginx in front of one replica against nginx in front of three, on the "
        "same 2 cores as the fake, nginx, Redis and the client: the cores, not the replicas, "
        "are the ceiling."
    )
    scale += "\n\n" + md_table(["path", "req/s", "p50 ms", "p99 ms", "ratio"], through, "lrrrr")
    return "\n\n".join([latency, text, scale])


def render(result: Result, img: Path) -> str:
    feats = result["features"]
    built = (
        f"This build: `store` {'present' if feats['store'] else 'absent'}, upstream "
        f"tokens-per-minute setting {feats['upstream_tpm'] or 'absent'}. Three replicas "
        "(`nobusy serve`, one worker each, on one redis-server) behind nginx, all on "
        "loopback; each scenario says what it could not measure on this build."
    )
    return "\n\n".join(
        [
            built,
            "### Exact limits",
            _limits(result, img),
            "### Quota",
            _quota(result["quota"]),
            "### Admission across replicas",
            _admission(result),
            "### Faults",
            _faults(result),
            "### Cost of sharing",
            _cost(result),
        ]
    )
