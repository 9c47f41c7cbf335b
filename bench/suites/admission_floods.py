"""The admission suite's flood cases (issue 11): three normal keys sending at random times,
alone and then beside a fourth key flooding at several rates and patiences; the target is the
normal keys' p99 latency within 1.25× of their p99 alone.

Normal keys send at Poisson times (seeded: the same times alone and beside each flood), as
independent clients do; at fixed intervals their requests seldom overlap, which hides the
case where a key light on average needs two slots at once. The flood starts 1 s before the
normal keys and hangs up when the phase ends; the normal keys' requests get ``TAIL_S`` more to
finish, and what is not answered by then counts as not answered.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from bench.loadgen import LoadSpec, run_open
from bench.suites.admission_report import GRACE, PATIENCE, _failures, _get, _ms, classify, summarise
from bench.suites.base import Goal, Result, at_most, fmt, md_table

# (the normal keys' load together, as a share of capacity; the flood's rate, in capacities;
# the flood's patience, s). The first is issue 11's case: 0.2× capacity per normal key.
CASES = [
    (0.6, 10.0, 5.0),
    (0.6, 5.0, 5.0),
    (0.6, 20.0, 5.0),
    (0.6, 10.0, 30.0),
    (0.3, 10.0, 5.0),
    (0.3, 20.0, 30.0),
]
CLIENTS = ("normal-1", "normal-2", "normal-3")
KEYS = (*CLIENTS, "flood")
TARGET = 1.25  # the normal keys' p99 beside a flood, over their p99 alone
LEAD_S = 1.0
TAIL_S = 3.0


def _normal(rate: float, seconds: float, lead: float) -> list[tuple[float, str]]:
    """(time, client) of the normal keys' requests: Poisson at ``rate`` each, seeded."""
    out: list[tuple[float, str]] = []
    for k, client in enumerate(CLIENTS):
        rng = random.Random(k)
        t = lead + rng.expovariate(rate)
        while t < lead + seconds:
            out.append((t, client))
            t += rng.expovariate(rate)
    return out


def run(
    capacity: float,
    seconds: float,
    specs: Callable[[str, float], LoadSpec],
    settle: Callable[[], None],
    log: Callable[[str], None],
) -> Result:
    """Every load alone, then every case; ``specs(key, patience)`` is a streaming request of
    that key telling nobusy that patience."""
    out: Result = {"seconds": seconds, "alone": {}, "cases": []}
    for load in sorted({c[0] for c in CASES}):
        out["alone"][f"{load:g}"] = _phase(capacity, seconds, specs, load, None, log)
        settle()
    for load, flood_x, patience in CASES:
        case = _phase(capacity, seconds, specs, load, (flood_x, patience), log)
        case |= {"load": load, "flood_x": flood_x, "flood_patience_s": patience}
        out["cases"].append(case)
        settle()
    return out


def _phase(
    capacity: float,
    seconds: float,
    specs: Callable[[str, float], LoadSpec],
    load: float,
    flood: tuple[float, float] | None,
    log: Callable[[str], None],
) -> Result:
    rate = load * capacity / len(CLIENTS)
    lead = LEAD_S if flood else 0.0
    end = lead + seconds
    requests: list[tuple[float, LoadSpec, float]] = []
    owners: list[str] = []
    for t, client in _normal(rate, seconds, lead):
        requests.append((t, specs(client, PATIENCE), PATIENCE + GRACE))
        owners.append(client)
    if flood is not None:
        flood_rate, patience = flood[0] * capacity, flood[1]
        spec = specs("flood", patience)
        for i in range(round(flood_rate * end)):
            requests.append((i / flood_rate, spec, patience + GRACE))
            owners.append("flood")
    cutoffs: list[float | None] = [end if o == "flood" else None for o in owners]
    sents = run_open(requests, cutoff=end + TAIL_S, cutoffs=cutoffs)
    recs = [classify(s) for s in sents]
    window = (lead, end + 1.0)
    normal = [r for r, o in zip(recs, owners, strict=True) if o != "flood"]
    result: Result = {
        "normal_rate_per_s": rate,
        "normal": summarise(normal, window, capacity, cut_fails=True),
    }
    name = f"load {load:g}, alone"
    if flood is not None:
        mine = [r for r, o in zip(recs, owners, strict=True) if o == "flood"]
        result["flood"] = summarise(mine, (0.0, end), capacity)
        result["flood_rate_per_s"] = flood[0] * capacity
        name = f"load {load:g}, flood {flood[0]:g}× patience {flood[1]:g} s"
    lat = result["normal"]["latency_ms"] or {}
    log(
        f"[admission] {name}: normal {result['normal']['answered']}/{len(normal)} answered, "
        f"p50 {fmt(lat.get('p50'), 0)} p99 {fmt(lat.get('p99'), 0)} ms"
    )
    return result


def ratio(floods: Result, case: Result) -> float | None:
    """The case's normal p99 over the same load's p99 alone."""
    alone = _get(floods, "alone", f"{case['load']:g}", "normal", "latency_ms", "p99")
    flooded = _get(case, "normal", "latency_ms", "p99")
    if not alone or flooded is None:
        return None
    return float(flooded) / float(alone)


def goals(result: Result) -> list[Goal]:
    floods = result.get("floods")
    if not floods:
        return []
    return [
        at_most(
            f"Flood {c['flood_x']:g}× capacity (patience {c['flood_patience_s']:g} s) beside "
            f"normal keys at {c['load']:g}× capacity: their p99 vs alone",
            None if (r := ratio(floods, c)) is None else r * 100,
            TARGET * 100,
            "%",
        )
        for c in floods["cases"]
    ]


def render(result: Result) -> str:
    floods: Any = result.get("floods")
    if not floods:
        return ""
    rows = []
    for c in floods["cases"]:
        n, f = c["normal"], c["flood"]
        alone = _get(floods, "alone", f"{c['load']:g}", "normal")
        r = ratio(floods, c)
        rows.append(
            [
                f"{c['load']:g}× ({c['normal_rate_per_s']:.2f}/s each)",
                f"{c['flood_x']:g}× ({c['flood_rate_per_s']:.0f}/s), {c['flood_patience_s']:g} s",
                f"{n['answered']}/{n['decided']}",
                f"{_ms(alone['latency_ms'], 'p50')} / {_ms(alone['latency_ms'], 'p99')}",
                f"{_ms(n['latency_ms'], 'p50')} / {_ms(n['latency_ms'], 'p99')}",
                "—" if r is None else f"**{r * 100:.0f}%**",
                f"{_ms(alone['ttft_ms'], 'p99')} / {_ms(n['ttft_ms'], 'p99')}",
                f"{f['answered']}/{f['sent']}",
                _failures(f),
            ]
        )
    headers = [
        "normal keys' load",
        "flood, its patience",
        "normal answered",
        "alone p50 / p99 ms",
        "beside the flood p50 / p99 ms",
        "p99 vs alone",
        "TTFT p99 alone / flood ms",
        "flood answered",
        "flood's other outcomes",
    ]
    intro = (
        "nobusy (`max_concurrency: 4`). Three normal keys send at random (Poisson) times, "
        f"{floods['seconds']:g} s per phase, first alone at each load, then beside a fourth "
        "key flooding at a fixed rate with its own patience (`x-nobusy-max-wait`), starting "
        f"{LEAD_S:g} s earlier and hanging up when the phase ends. The normal keys' arrival "
        "times are the same alone and beside every flood at a load. Target: their p99 latency "
        f"within {TARGET:g}× of alone. A flood gets what the normal keys did not need at their "
        "busiest lately (10 s): beside random arrivals that is little."
    )
    return "\n\n".join(
        ["### A flood beside normal keys sending at random", intro, md_table(headers, rows)]
    )
