"""Raw results in ``bench/results/`` and the page made from them, ``docs/benchmarks.md``.

The page is rebuilt from the newest saved result of every suite, so ``--only memory``
refreshes the memory figures and keeps the others. The "What was tried" section is copied
from ``bench/tried.md``: edit it there, not in the generated page.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import traceback
from pathlib import Path
from typing import Any

from bench.procs import BENCH_DIR, REPO
from bench.suites import SUITES
from bench.suites.base import Goal, RunSettings, md_table

__all__ = ["DOC", "RESULTS", "check_goals", "latest", "machine", "save", "write"]

RESULTS = BENCH_DIR / "results"
DOC = REPO / "docs" / "benchmarks.md"
IMG = REPO / "docs" / "img"
TRIED = BENCH_DIR / "tried.md"
COMMAND = "make bench"

Record = dict[str, Any]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def save(
    name: str,
    settings: RunSettings,
    result: Record,
    started: dt.datetime,
    load_before: tuple[float, float, float] | None = None,
) -> Path:
    """Write one suite's raw result to ``bench/results/<suite>-<date>[-quick].json``."""
    RESULTS.mkdir(exist_ok=True)
    now = dt.datetime.now().astimezone()
    record = {
        "suite": name,
        "date": now.date().isoformat(),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": now.isoformat(timespec="seconds"),
        "quick": settings.quick,
        "settings": {
            "rounds": settings.rounds,
            "warmup_s": settings.warmup,
            "window_s": settings.duration,
            "min_round_trips": settings.min_round_trips,
            "max_window_s": settings.max_window,
            "concurrencies": list(settings.concurrencies),
            "fake_tokens": settings.tokens,
        },
        "machine": machine(),
        # Other work on the machine skews figures: the 1/5/15-minute load averages at the start.
        "load_before": list(load_before) if load_before else None,
        "result": result,
    }
    suffix = "-quick" if settings.quick else ""
    path = RESULTS / f"{name}-{record['date']}{suffix}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def latest() -> dict[str, Record]:
    """The newest saved record of each known suite."""
    found: dict[str, Record] = {}
    for name in SUITES:
        for path in sorted(RESULTS.glob(f"{name}-*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("suite") != name:
                continue
            if name not in found or record["finished_at"] > found[name]["finished_at"]:
                found[name] = record
    return found


def _verdict(goal: Goal) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[goal.met]


def check_goals(records: dict[str, Record]) -> tuple[list[Goal], list[str]]:
    goals: list[Goal] = []
    problems: list[str] = []
    for name, record in records.items():
        if record["result"].get("crashed"):
            problems.append(f"{name}: the suite failed, so its targets were not checked")
            continue
        try:
            goals += SUITES[name].goals(record["result"])
        except Exception:  # a result saved by an older harness must not stop the page
            last = traceback.format_exc().strip().splitlines()[-1]
            problems.append(f"{name}: cannot check its targets ({last})")
    return goals, problems


def _section(name: str, record: Record) -> str:
    suite = SUITES[name]
    head = f"## {suite.title}\n\n"
    when = f"*{record['finished_at']}, suite `{name}`"
    if record.get("load_before"):
        when += f", load average before it {record['load_before'][0]:.2f}"
    when += ", quick run*" if record.get("quick") else "*"
    crashed = record["result"].get("crashed")
    if crashed:
        return head + when + f"\n\nThe suite failed:\n\n```\n{crashed.strip()}\n```"
    try:
        body = suite.render(record["result"], IMG)
    except Exception:
        body = f"Cannot render this result:\n\n```\n{traceback.format_exc(limit=3)}\n```"
    return head + when + "\n\n" + body


def _method(settings: dict[str, Any]) -> str:
    tokens = settings.get("fake_tokens", 20)
    bullets = [
        "Everything runs on this one machine, on 127.0.0.1: the project's fake upstream "
        f"(`nobusy fake-upstream --mode ok --tokens {tokens}`: every answer has {tokens} content "
        f"chunks, so a stream is {tokens + 2} SSE events with the role and finish chunks), "
        "nobusy (`nobusy serve --log-level warning`, one worker unless said otherwise) and "
        f"LiteLLM proxy {_litellm_version()} (its own virtualenv, one worker, no database, "
        "`LITELLM_LOG=WARNING`). The client, the gateway and the fake share the same cores.",
        "The client is `bench/loadgen.py`: asyncio + uvloop, N keep-alive connections each "
        "sending the same request back to back, responses parsed with httptools. A run is a "
        f"warm-up of {settings.get('warmup_s')} s (longer if needed, until every connection "
        f"has had an answer), then a window of {settings.get('window_s')} s, stretched for "
        f"slow paths to {settings.get('min_round_trips')} times the warm-up's median latency "
        f"(at most {settings.get('max_window_s')} s), since they answer in waves. Throughput "
        "is the successful responses completed in the window over its length; latency percentiles "
        "come from the requests started in it. Time to first token (TTFT) is the time to the "
        'first body piece that holds a non-empty `"content"` string (the role chunk\'s `""` '
        "does not count).",
        f"The paths are measured in rounds ({settings.get('rounds')}), each round visiting "
        "every path in turn, so drift of the machine hits all of them alike. Figures are "
        "medians over rounds; *added* latency and ratios are taken within each round, then "
        "the median of those.",
        "CPU is user + system time from `/proc/PID/stat` of the gateway's whole process "
        "tree, read at the window's edges, per 1,000 completed requests.",
        "Every path gets the same `Authorization: Bearer sk-...` header (LiteLLM's master key).",
    ]
    return "## How it is measured\n\n" + "\n".join(f"- {b}" for b in bullets)


def _litellm_version() -> str:
    from bench.procs import LITELLM_VERSION

    return LITELLM_VERSION


def write(records: dict[str, Record] | None = None) -> Path:
    """Rebuild docs/benchmarks.md (and its plots) from the newest saved results."""
    records = latest() if records is None else records
    IMG.mkdir(parents=True, exist_ok=True)
    # The machine, date and method of the newest full run: a quick smoke run of one suite
    # must not describe the others' rounds and windows.
    full = [r for r in records.values() if not r.get("quick")] or list(records.values())
    newest = max(full, key=lambda r: r["finished_at"], default=None)
    info = newest["machine"] if newest else machine()
    date = newest["date"] if newest else dt.date.today().isoformat()
    settings = newest.get("settings", {}) if newest else {}
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m bench` from bench/results/*.json; edit bench/, "
        'not this page ("What was tried" comes from bench/tried.md). -->',
        "",
        f"Measured with `{COMMAND}` (`python -m bench`; `python -m bench --quick` for a smoke "
        "run, `--only overhead,memory` for some suites). Raw results: "
        "[`bench/results/`](../bench/results/).",
        "",
    ]
    if any(r.get("quick") for r in records.values()):
        quick = ", ".join(f"`{n}`" for n, r in records.items() if r.get("quick"))
        lines += [
            f"> **Quick run** for {quick}: one short round per figure, a smoke test of the "
            "harness. Run `make bench` for figures worth quoting.",
            "",
        ]
    lines += [
        md_table(
            ["machine", ""],
            [
                ["CPU", str(info.get("cpu"))],
                ["cores", str(info.get("cores"))],
                ["memory", f"{info.get('memory_gib')} GiB"],
                ["Python", str(info.get("python"))],
                ["kernel", str(info.get("kernel"))],
                ["date", date],
                ["command", f"`{COMMAND}`"],
            ],
            "ll",
        ),
        "",
        "## Against the targets of issue 3",
        "",
    ]
    goals, problems = check_goals(records)
    if goals:
        lines.append(
            md_table(
                ["target", "goal", "measured", "verdict"],
                [[g.name, g.goal, g.measured, _verdict(g)] for g in goals],
                "llrl",
            )
        )
        lines.append("")
        lines += [f"- {g.name}: {g.verdict}" for g in goals]
    else:
        lines.append("No suite with targets has been run yet.")
    lines += [f"- {p}" for p in problems]
    lines += ["", _method(settings), ""]
    for name in SUITES:
        if name in records:
            lines += [_section(name, records[name]), ""]
    lines += ["## What was tried", ""]
    tried = "- (nothing recorded yet)"
    if TRIED.exists():
        text = [line for line in TRIED.read_text().splitlines() if not line.startswith("<!--")]
        tried = "\n".join(text).strip() or tried
    lines += [tried, ""]
    DOC.write_text("\n".join(lines))
    return DOC
