"""The protocols suite's tables and targets, from the raw result of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.suites.base import Goal, Result, at_least, at_most, fmt, md_table

PROTOCOL_NAMES = {"chat": "chat completions", "messages": "Messages", "responses": "Responses"}
_MODES = (("n", "not streamed"), ("s", "streamed"))


def _gateways(faults: Result) -> list[tuple[str, Result]]:
    """(label, part) for nobusy over each upstream kind, then LiteLLM."""
    out = [
        (f"nobusy, `kind: {kind}` upstream", part)
        for kind, part in faults.get("nobusy", {}).items()
    ]
    if "litellm" in faults:
        out.append(("LiteLLM 1.106.2, openai-format upstream", faults["litellm"]))
    return out


def _cell(part: Result, scenario: str, protocol: str, mode: str) -> list[str] | None:
    for key, verdicts in part["samples"].items():
        if key.endswith(f"-{scenario}-{protocol}-{mode}"):
            return list(verdicts)
    return None


def _passes(part: Result, scenarios: list[str], protocol: str, mode: str) -> tuple[int, int]:
    """Scenarios passed (every repetition identical to the healthy answer) of those asked."""
    cells = [_cell(part, s, protocol, mode) for s in scenarios]
    asked = [c for c in cells if c]
    return sum(all(v == "ok" for v in c) for c in asked), len(asked)


def totals(part: Result, scenarios: list[str], protocols: tuple[str, ...]) -> tuple[int, int]:
    passed = total = 0
    for protocol in protocols:
        for mode, _ in _MODES:
            p, t = _passes(part, scenarios, protocol, mode)
            passed, total = passed + p, total + t
    return passed, total


def _pass_table(faults: Result, scenarios: list[str], nobusy_only: bool = False) -> str:
    headers = ["gateway"]
    for protocol in PROTOCOL_NAMES.values():
        headers += [f"{protocol}, {label}" for _, label in _MODES]
    headers.append("all")
    rows = []
    for label, part in _gateways(faults):
        if nobusy_only and not label.startswith("nobusy"):
            continue
        row = [label]
        for protocol in PROTOCOL_NAMES:
            for mode, _ in _MODES:
                p, t = _passes(part, scenarios, protocol, mode)
                row.append(f"{p}/{t}")
        p, t = totals(part, scenarios, tuple(PROTOCOL_NAMES))
        row.append(f"**{p} of {t}**")
        rows.append(row)
    return md_table(headers, rows)


def _matrix(part: Result, scenarios: list[str]) -> str:
    """Scenario by scenario for one gateway: ✓, or the first failure's reason, shortened."""
    headers = ["scenario"] + [f"{p[:4]}. {m}" for p in PROTOCOL_NAMES.values() for m, _ in _MODES]
    rows = []
    for scenario in scenarios:
        row = [f"`{scenario}`"]
        for protocol in PROTOCOL_NAMES:
            for mode, _ in _MODES:
                cell = _cell(part, scenario, protocol, mode)
                bad = [v for v in cell or () if v != "ok"]
                row.append("—" if cell is None else "✓" if not bad else "✗ " + _short(bad[0]))
        rows.append(row)
    return md_table(headers, rows, "l" + "l" * 6)


def _short(reason: str) -> str:
    reason = reason.replace("|", "/").replace("\n", " ")
    for cut in ("litellm.", "Error code: "):
        reason = reason.replace(cut, "")
    return reason[:70] + ("…" if len(reason) > 70 else "")


def _fault_section(faults: Result) -> str:
    scenarios = list(faults["scenarios"])
    parts = [
        f"The {len(scenarios)} fault scenarios of the chat failover tests and suite (the first "
        "route fails, the second is healthy), each asked through chat completions (`openai` "
        "SDK), the Messages API (`anthropic` SDK 2.10.0) and the Responses API (`openai` SDK "
        "`responses.create`), streamed and not: "
        f"{len(scenarios)} × 3 × 2 = {len(scenarios) * 6} cases per gateway. A case passes "
        "when the SDK reads a well-formed answer (one `message_start` … `message_stop`, one "
        "`response.created`, one finish reason; deltas that add up to the final object) whose "
        "text, reasoning, tool calls (arguments parsed as JSON) and stop reason equal the "
        "healthy answer's through the same protocol and mode. nobusy: every case "
        f"{_times(faults['reps'])}, one alias per case; a case passes when every repetition "
        "does. LiteLLM (`num_retries: 0`, a fallback to a healthy deployment per case, the "
        "first-token `timeout`/`stream_timeout` of 1 s on the hang and keep-alive deployments, "
        "as in the failover suite): once each, six at a time, each request given up after 20 s.",
        _pass_table(faults, scenarios),
    ]
    more = list(faults.get("more", {}))
    if more:
        parts.append(
            f"The chat failover tests' {len(more)} other drills ("
            + ", ".join(f"`{m}`" for m in more)
            + "; a cut continued by a backup that continues as vLLM does, as nobusy probes, or "
            "in words; a 401; a cut after the reasoning), nobusy only:"
        )
        parts.append(_pass_table(faults, more, nobusy_only=True))
    for kind, why in faults.get("kinds", {}).items():
        if why is not None:
            parts.append(f"`kind: {kind}` upstreams were not measured: {why}.")
    for label, part in _gateways(faults):
        asked = scenarios + (more if label.startswith("nobusy") else [])
        p, t = totals(part, asked, tuple(PROTOCOL_NAMES))
        if p < t:
            parts.append(f"**{label}**, case by case:\n\n" + _matrix(part, asked))
        if part.get("healthy_broken"):
            broken = "; ".join(
                f"{_case(k)}: {_short(v)}" for k, v in part["healthy_broken"].items()
            )
            parts.append(f"{label}: the healthy request itself failed ({broken}).")
        notes = sorted(set(part.get("notes", {}).values()))
        if notes:
            parts.append(f"{label}, departures from the spec the SDK tolerated: "
                         + "; ".join(_short(n) for n in notes[:3]) + ".")  # fmt: skip
    for name, error in faults.get("errors", {}).items():
        parts.append(f"{name}: {error.splitlines()[0]}")
    return "\n\n".join(parts)


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _case(key: str) -> str:
    """``('messages', 'reasoning', True)`` as "Messages, reasoning, streamed"."""
    bits = [b.strip(" '()") for b in key.split(",")]
    if len(bits) != 3:
        return key
    mode = "streamed" if bits[2] == "True" else "not streamed"
    return f"{PROTOCOL_NAMES.get(bits[0], bits[0])}, {bits[1]}, {mode}"


def _load(values: Any) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "—"


def _cost_section(cost: Result, load: Result) -> str:
    lat = cost["latency"]
    rows = []
    for mode, part in lat.items():
        for path in ("chat", "messages", "responses"):
            row = part["paths"][path]
            added = part["added"]
            rows.append([
                f"{PROTOCOL_NAMES[path]}, {mode}", f"{row['requests']:,}",
                fmt(row["p50_ms"], 3), fmt(row["p95_ms"], 3),
                "—" if path == "chat" else f"{added[f'{path}_p50']['median_ms']:+.3f}",
                "—" if path == "chat" else f"{added[f'{path}_p95']['median_ms']:+.3f}",
            ])  # fmt: skip
    first = next(iter(lat.values()))
    intro = (
        "One nobusy in front of one fake upstream with no delay "
        f"({cost['tokens']} content chunks an answer). *Latency*: one client sends a chat, a "
        "Messages and a Responses request in turn (who goes first rotates), each on its own "
        f"keep-alive connection, read to the end; {first['rounds']} rounds of "
        f"{first['cycles']} turns; *added* is the adapter's p50 (p95) minus chat's in the same "
        "round, the median over rounds. Responses requests send `store: false`. *Throughput*: "
        "32 connections on one path at a time, the three in turn each round; the ratio to "
        "chat's requests/s in the same round, the median over rounds."
    )
    table = md_table(["path", "requests", "p50 ms", "p95 ms", "added p50 ms", "added p95 ms"], rows)
    trows = []
    for mode, part in cost["throughput"].items():
        for path, row in part["paths"].items():
            trows.append([
                f"{PROTOCOL_NAMES[path]}, {mode}", fmt(row["rps"], 0), fmt(row["x_chat"], 3, "×"),
                fmt(row["p50_ms"], 2), fmt(row["gateway_cpu_per_1k"], 3), str(row["errors"]),
            ])  # fmt: skip
    throughput = md_table(
        ["path (c=32)", "req/s", "× chat", "p50 ms", "nobusy CPU s/1k", "errors"], trows
    )
    machine = (
        "Load average (1/5/15 min) at the suite's start "
        f"{_load(load.get('start'))}, after the faults {_load(load.get('after_faults'))}, at the "
        f"end {_load(load.get('end'))}: the machine's two cores are shared with other work, "
        "which the interleaving spreads over the three paths alike. The pass counts above do "
        "not depend on it."
    )
    return "\n\n".join([intro, table, throughput, machine])


def render(result: Result, img: Path) -> str:
    return "\n\n".join([
        "### Faults × protocols", _fault_section(result["faults"]),
        "### Adapter cost", _cost_section(result["cost"], result.get("load_average", {})),
    ])  # fmt: skip


def goals(result: Result) -> list[Goal]:
    faults, cost = result["faults"], result["cost"]
    scenarios = list(faults["scenarios"])
    out: list[Goal] = []
    for kind, part in faults.get("nobusy", {}).items():
        p, t = totals(part, scenarios, tuple(PROTOCOL_NAMES))
        met = p == t and t > 0
        out.append(Goal(
            f"faults × {{chat, Messages, Responses}} × {{stream, not}}, `kind: {kind}` upstream",
            f"{t} of {t}", f"{p} of {t}", met,
            "Met: every case identical to the healthy answer." if met else
            f"Missed: {t - p} of {t} cases differ from the healthy answer.",
        ))  # fmt: skip
    lat = cost["latency"]["non-stream"]["added"]
    tput = cost["throughput"]["non-stream"]["paths"]
    for path, name in (("messages", "Messages"), ("responses", "Responses")):
        out.append(at_most(f"{name} adapter: added latency p50, non-streaming",
                           lat[f"{path}_p50"]["median_ms"], 0.3, "ms"))  # fmt: skip
        ratio = tput[path]["x_chat"]
        out.append(at_least(f"{name} adapter: throughput, share of the chat path's (c=32)",
                            None if ratio is None else 100 * ratio, 90, "%"))  # fmt: skip
    return out
