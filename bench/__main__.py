"""``python -m bench [--quick] [--only overhead,memory,embedded,workers] [--report-only]``.

Runs the suites one after the other, each starting (and stopping) its own processes on
127.0.0.1, saves each raw result to ``bench/results/<suite>-<date>.json`` and rebuilds
``docs/benchmarks.md`` with its plots in ``docs/img/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import time
import traceback
from types import FrameType

from bench import procs, report
from bench.suites import SUITES
from bench.suites.base import Context, RunSettings

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"{time.monotonic() - _T0:6.1f}s {message}", flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one short round per figure: a smoke test (~4 min)"
    )
    parser.add_argument(
        "--only",
        default=",".join(SUITES),
        help=f"comma-separated suites to run (default all: {','.join(SUITES)})",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing; rebuild docs/benchmarks.md from bench/results/",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    args.names = names
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn it into Ctrl-C: inside a load run asyncio.Runner then cancels the run cleanly,
    # elsewhere it raises KeyboardInterrupt; either way the same cleanup follows.
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.report_only:
        log(f"wrote {report.write().relative_to(procs.REPO)}")
        return 0
    # Ctrl-C and SIGTERM unwind through the same cleanup, even when started with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    settings = RunSettings.make(args.quick)
    processes = procs.Processes(log)
    ctx = Context(settings, processes, log)
    failed: list[str] = []
    mode = "quick smoke run (~4 min)" if settings.quick else "full run (~24 min on 2 cores)"
    log(f"bench: {mode} of {', '.join(args.names)}; processes log to bench/.run/")
    if "overhead" in args.names and not procs.litellm_ready():
        log("  (plus 1-3 min to install LiteLLM into bench/.litellm-venv, this once)")
    try:
        for name in args.names:
            suite = SUITES[name]
            log(f"=== {name}: {suite.title}")
            started = dt.datetime.now().astimezone()
            load = os.getloadavg()
            if load[0] > 0.5:
                log(f"  note: load average {load[0]:.2f} before the suite: other work may skew it")
            clock = time.monotonic()
            try:
                result = suite.run(ctx)
            except KeyboardInterrupt:
                raise
            except Exception:
                failed.append(name)
                text = traceback.format_exc()
                log(f"[{name}] FAILED:\n{text}")
                result = {"crashed": text}
            finally:
                processes.stop_all()
            path = report.save(name, settings, result, started, load)
            log(
                f"=== {name} done in {time.monotonic() - clock:.0f}s; "
                f"raw result {path.relative_to(procs.REPO)}"
            )
    except KeyboardInterrupt:
        log("interrupted: stopping every process this run started")
        processes.stop_all()
        return 130
    finally:
        processes.stop_all()
    doc = report.write()
    log(f"wrote {doc.relative_to(procs.REPO)} and its plots in docs/img/")
    for goal in report.check_goals(report.latest())[0]:
        log(f"  {goal.name}: {goal.measured} ({goal.goal}) {goal.verdict}")
    if failed:
        log(f"suites that failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
