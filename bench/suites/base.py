"""What every suite shares: the run context, the suite record, goals, and timed runs.

A suite is a ``Suite``: ``run(ctx)`` returns a JSON-able dict (saved raw under
``bench/results/``), ``render(result, img_dir)`` turns such a dict into a markdown section
(writing its plots), and ``goals(result)`` checks it against the issue's targets. The report
only ever reads saved results, so it can be regenerated without measuring again.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import LoadResult, LoadSpec, chat_body, run_load
from bench.procs import LiteLLMInstall, Proc, Processes, cpu_seconds, ensure_litellm

__all__ = [
    "Context",
    "Result",
    "Endpoint",
    "Goal",
    "RunSettings",
    "Suite",
    "at_least",
    "at_most",
    "aggregate",
    "find",
    "fmt",
    "md_table",
    "run_rounds",
    "load_spec",
    "measure",
    "median",
]

Result = dict[str, Any]


@dataclass(frozen=True)
class RunSettings:
    """How long and how often; ``quick`` shrinks everything to a smoke test."""

    quick: bool = False
    rounds: int = 3
    warmup: float = 0.5
    duration: float = 2.5
    min_round_trips: float = 5.0  # the window lasts at least this many median latencies...
    max_window: float = 8.0  # ...but no longer than this
    concurrencies: tuple[int, ...] = (1, 32, 128)
    tokens: int = 20  # content chunks per fake answer: 22 SSE events with the role and finish

    @classmethod
    def make(cls, quick: bool) -> RunSettings:
        if quick:
            return cls(
                quick=True, rounds=1, warmup=0.3, duration=1.0, min_round_trips=3, max_window=4
            )
        return cls()


@dataclass
class Context:
    """Handed to every suite: settings, the process manager, the progress printer."""

    settings: RunSettings
    procs: Processes
    log: Callable[[str], None]
    key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_hex(12))
    _litellm: LiteLLMInstall | None = None

    def litellm(self) -> LiteLLMInstall:
        """LiteLLM's virtualenv, installed on first use (once per bench run)."""
        if self._litellm is None:
            self._litellm = ensure_litellm(self.log)
        return self._litellm

    @property
    def headers(self) -> dict[str, str]:
        """Sent on every path alike: LiteLLM needs it, the others ignore it."""
        return {"Authorization": f"Bearer {self.key}"}


@dataclass(frozen=True)
class Goal:
    """One target of the issue and how this run fared against it."""

    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured
    verdict: str  # a sentence: met, or missed by how much, or why it was not measured


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    run: Callable[[Context], Result]
    render: Callable[[Result, Path], str]
    goals: Callable[[Result], list[Goal]]


@dataclass
class Endpoint:
    """One path a request can take; CPU is charged to ``gateway`` (the fake for direct)."""

    name: str
    port: int
    model: str
    gateway: Proc | None = None
    upstream: Proc | None = None
    error: str | None = None  # set when this path could not be measured


def load_spec(ctx: Context, endpoint: Endpoint, stream: bool) -> LoadSpec:
    body = chat_body(endpoint.model, stream)
    return LoadSpec(endpoint.port, json.dumps(body).encode(), stream, ctx.headers)


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def measure(
    ctx: Context,
    suite: str,
    endpoint: Endpoint,
    stream: bool,
    concurrency: int,
    label: str,
) -> Result:
    """One timed run against one endpoint, with the CPU its processes used in the window."""
    s = ctx.settings
    trees = {
        role: proc.tree()
        for role, proc in (("gateway", endpoint.gateway), ("upstream", endpoint.upstream))
        if proc is not None
    }
    cpu: dict[str, float] = {}

    def start() -> None:
        for role, pids in trees.items():
            cpu[role] = -cpu_seconds(pids)

    def end() -> None:
        for role, pids in trees.items():
            cpu[role] += cpu_seconds(pids)

    result = run_load(
        load_spec(ctx, endpoint, stream),
        concurrency,
        duration=s.duration,
        warmup=s.warmup,
        min_round_trips=s.min_round_trips,
        max_window=s.max_window,
        on_start=start,
        on_end=end,
    )
    row = summarise(result, cpu)
    ctx.log(f"[{suite}] {label:<28} {endpoint.name:<10} {progress(row)}")
    return row


def summarise(result: LoadResult, cpu: dict[str, float]) -> Result:
    """A run as a flat, JSON-able dict; latencies in milliseconds."""
    row: Result = {
        "rps": result.rps,
        "events_per_s": result.events_per_s,
        "events_per_request": result.events_per_request,
        "completed": result.completed,
        "errors": result.errors,
        "statuses": result.statuses,
        "duration_s": result.duration,
        "loadgen_cpu": result.loadgen_cpu,
        "latency_ms": _ms(dataclasses.asdict(result.latency)) if result.latency else None,
        "ttft_ms": _ms(dataclasses.asdict(result.ttft)) if result.ttft else None,
        "cpu_s": cpu,
    }
    for role in ("gateway", "upstream"):
        seconds = cpu.get(role)
        done = result.completed
        row[f"{role}_cpu_per_1k"] = None if seconds is None or not done else seconds / done * 1000
    return row


def _ms(stats: dict[str, float]) -> dict[str, float]:
    return {k: (v if k == "count" else v * 1000) for k, v in stats.items()}


def progress(row: Result) -> str:
    lat = row["latency_ms"] or {}
    text = f"{row['rps']:>8,.0f} req/s"
    if row["events_per_request"]:
        text += f" {row['events_per_s']:>9,.0f} chunks/s"
    text += (
        f"  p50 {lat.get('p50', float('nan')):7.2f} ms  p99 {lat.get('p99', float('nan')):7.2f} ms"
    )
    if row["ttft_ms"]:
        text += f"  ttft {row['ttft_ms']['p50']:6.2f} ms"
    if row.get("gateway_cpu_per_1k") is not None:
        text += f"  cpu {row['gateway_cpu_per_1k']:5.2f} s/1k"
    if row["errors"]:
        text += f"  ERRORS {row['errors']} {row['statuses']}"
    return text


def _gap(value: float, limit: float) -> str:
    return f"{abs(value - limit):,.2f}"


def at_most(name: str, value: float | None, limit: float, unit: str, why: str = "") -> Goal:
    """A goal ``value <= limit``; the verdict says by how much it was missed."""
    goal = f"≤ {limit:g} {unit}"
    if value is None:
        return Goal(name, goal, "—", None, f"Not measured{': ' + why if why else ''}.")
    measured = f"{value:,.2f} {unit}"
    if value <= limit:
        return Goal(name, goal, measured, True, f"Met, with {_gap(value, limit)} {unit} to spare.")
    over = (value - limit) / limit * 100 if limit else float("inf")
    verdict = (
        f"Missed by {_gap(value, limit)} {unit}: measured {measured} against {goal} "
        f"({over:,.0f}% over the limit)."
    )
    return Goal(name, goal, measured, False, verdict)


def at_least(name: str, value: float | None, limit: float, unit: str, why: str = "") -> Goal:
    """A goal ``value >= limit``; the verdict says by how much it was missed."""
    goal = f"≥ {limit:g}{unit}"
    if value is None:
        return Goal(name, goal, "—", None, f"Not measured{': ' + why if why else ''}.")
    measured = f"{value:,.2f}{unit}"
    if value >= limit:
        return Goal(name, goal, measured, True, f"Met, with {_gap(value, limit)}{unit} to spare.")
    short = (limit - value) / limit * 100
    verdict = (
        f"Missed by {_gap(value, limit)}{unit}: measured {measured} against {goal} "
        f"({short:,.0f}% short of the target)."
    )
    return Goal(name, goal, measured, False, verdict)


def run_rounds(
    ctx: Context, suite: str, endpoints: list[Endpoint], scenarios: list[tuple[bool, int]]
) -> list[Result]:
    """Each scenario (stream, concurrency) in rounds; each round visits every endpoint in turn,
    so drift of the machine hits all of them alike."""
    rounds = ctx.settings.rounds
    runs: list[Result] = []
    for stream, concurrency in scenarios:
        for number in range(1, rounds + 1):
            for endpoint in endpoints:
                if endpoint.error is None and endpoint.gateway and not endpoint.gateway.alive():
                    endpoint.error = (
                        f"{endpoint.gateway.name} exited mid-run:\n{endpoint.gateway.log_tail()}"
                    )
                    ctx.log(f"[{suite}] {endpoint.name} is gone; skipping it from here on")
                if endpoint.error is not None:
                    continue
                mode = "stream" if stream else "non-stream"
                label = f"{mode} c={concurrency} round {number}/{rounds}"
                row = measure(ctx, suite, endpoint, stream, concurrency, label)
                row |= {"path": endpoint.name, "stream": stream, "concurrency": concurrency}
                runs.append(row | {"round": number})
    return runs


def _pick(row: Result, *keys: str) -> float | None:
    value: Any = row
    for key in keys:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return float(value)


def aggregate(runs: list[Result], baseline: str | None, reference: str | None) -> list[Result]:
    """Medians over rounds per (stream, concurrency, path), plus per-round differences to
    ``baseline`` (added latency) and ratios to ``reference`` (throughput), medians too."""
    groups: dict[tuple[bool, int, str], dict[int, Result]] = {}
    order: list[tuple[bool, int, str]] = []
    for run in runs:
        key = (run["stream"], run["concurrency"], run["path"])
        if key not in groups:
            groups[key] = {}
            order.append(key)
        groups[key][run["round"]] = run
    rows: list[Result] = []
    for stream, concurrency, path in order:
        mine = groups[(stream, concurrency, path)]
        base = groups.get((stream, concurrency, baseline or ""), {}) if path != baseline else {}
        ref = groups.get((stream, concurrency, reference or ""), {})
        rows.append(
            {
                "stream": stream,
                "concurrency": concurrency,
                "path": path,
                "rounds": len(mine),
                "rps": _median_of(mine, "rps"),
                "events_per_s": _median_of(mine, "events_per_s"),
                "events_per_request": _median_of(mine, "events_per_request"),
                "p50_ms": _median_of(mine, "latency_ms", "p50"),
                "p99_ms": _median_of(mine, "latency_ms", "p99"),
                "ttft_p50_ms": _median_of(mine, "ttft_ms", "p50"),
                "ttft_p99_ms": _median_of(mine, "ttft_ms", "p99"),
                "gateway_cpu_per_1k": _median_of(mine, "gateway_cpu_per_1k"),
                "loadgen_cpu": _median_of(mine, "loadgen_cpu"),
                "errors": sum(int(r["errors"]) for r in mine.values()),
                "added_p50_ms": _median_diff(mine, base, "latency_ms", "p50"),
                "added_p99_ms": _median_diff(mine, base, "latency_ms", "p99"),
                "added_ttft_p50_ms": _median_diff(mine, base, "ttft_ms", "p50"),
                "x_reference": _median_ratio(mine, ref, "rps"),
            }
        )
    return rows


def _median_of(rounds: dict[int, Result], *keys: str) -> float | None:
    return median(_pick(r, *keys) for r in rounds.values())


def _median_diff(mine: dict[int, Result], base: dict[int, Result], *keys: str) -> float | None:
    """Median over rounds of mine minus base, both from the same round."""
    pairs = [(_pick(r, *keys), _pick(base[n], *keys)) for n, r in mine.items() if n in base]
    return median(a - b for a, b in pairs if a is not None and b is not None)


def _median_ratio(mine: dict[int, Result], ref: dict[int, Result], *keys: str) -> float | None:
    """Median over rounds of mine over ref, both from the same round."""
    pairs = [(_pick(r, *keys), _pick(ref[n], *keys)) for n, r in mine.items() if n in ref]
    return median(a / b for a, b in pairs if a is not None and b)


def find(rows: list[Result], **match: Any) -> Result | None:
    """The first aggregated row whose fields equal ``match``."""
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """A number for a table: thousands separators, ``—`` when missing."""
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def md_table(headers: list[str], rows: list[list[str]], align: str = "") -> str:
    """A markdown table; ``align`` has one letter per column (l or r), default right but first."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
