"""Protocols: every fault scenario through chat completions, the Messages API and the Responses
API, streamed and not, through nobusy (over ``kind: openai`` and ``kind: anthropic`` upstreams)
and LiteLLM; and the cost of the Messages and Responses adapters over the chat path.

Issue 14's benchmark. ``protocols_faults.py`` asks the 13 scenarios with the official SDKs and
compares each answer with the healthy one; ``protocols_cost.py`` measures added latency and
throughput; ``protocols_report.py`` renders both and checks the targets.
"""

from __future__ import annotations

import os

from bench.suites.base import Context, Result, Suite
from bench.suites.protocols_cost import cost
from bench.suites.protocols_faults import measure
from bench.suites.protocols_report import goals, render


def run(ctx: Context) -> Result:
    load = {"start": os.getloadavg()}
    faults = measure(ctx, reps=1 if ctx.settings.quick else 3)
    load["after_faults"] = os.getloadavg()
    adapter = cost(ctx)
    load["end"] = os.getloadavg()
    return {"faults": faults, "cost": adapter, "load_average": load}


SUITE = Suite(
    name="protocols",
    title="Protocols: faults through chat, Messages and Responses, and the adapters' cost",
    run=run,
    render=render,
    goals=goals,
)
