"""LiteLLM in the ``replicas`` suite: three LiteLLM proxies on the suite's Redis behind the same
nginx, the fast fake as one deployment with a ``tpm`` of its own, driven at 3× as nobusy's
upstream token ceiling is (issue 13: "compare ... with LiteLLM 1.106.2 with its Redis
settings (its accepted count)"); then one of the proxies alone at the same demand, which
shows whether its limit holds at all.

Only a deployment's limit can be compared here: LiteLLM's per-key limits belong to virtual
keys, which need its PostgreSQL database (Prisma, whose engine it downloads at run time). The
router shares a deployment's usage through Redis with ``routing_strategy:
usage-based-routing-v2`` and ``redis_host``/``redis_port`` in ``router_settings`` (its
``router_strategy/lowest_tpm_rpm_v2.py``); it counts per calendar minute (keys named by
``%H-%M``), so the run starts just after a minute turns and ends before the next.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time

from bench import procs
from bench.loadgen import LoadSpec, run_open
from bench.suites.base import Context, Result
from bench.suites.replicas_fleet import REPLICAS, Fleet, request_spec
from bench.suites.replicas_report import count, outcome

__all__ = ["config", "run"]


def config(upstream_port: int, tpm: int, redis_port: int) -> str:
    """One deployment, ``fast``, on the fast fake, with its ``tpm``; usage shared in Redis."""
    return (
        "model_list:\n"
        "  - model_name: fast\n"
        "    litellm_params:\n"
        "      model: openai/ok\n"
        f'      api_base: "http://{procs.HOST}:{upstream_port}/v1"\n'
        "      api_key: x\n"
        f"      tpm: {tpm}\n"
        "router_settings:\n"
        "  routing_strategy: usage-based-routing-v2\n"
        "  enable_pre_call_checks: true\n"
        f'  redis_host: "{procs.HOST}"\n'
        f"  redis_port: {redis_port}\n"
    )


def _next_minute() -> float:
    """Seconds until the wall clock's minute turns, and a little more."""
    now = dt.datetime.now()
    return 60.0 - now.second - now.microsecond / 1e6 + 0.2


def run(ctx: Context, fleet: Fleet, tpm: int, seconds: float, rate: float) -> Result:
    """Three proxies, nginx in front, ``rate`` requests/s for ``seconds`` inside one minute;
    the tokens answered. ``{"unavailable": why}`` when LiteLLM cannot run here."""
    install = ctx.litellm()
    if not install.ok:
        why = (install.error or "not installed").strip().splitlines()[-1][:300]
        return {"unavailable": f"LiteLLM {procs.LITELLM_VERSION} is not installed: {why}"}
    key = "sk-bench-" + secrets.token_hex(12)
    text = config(fleet.fakes["fast"].port, tpm, fleet.redis_port)
    started = []
    try:
        for i in range(REPLICAS):
            name = f"rep-litellm{i + 1}"
            started.append(ctx.procs.litellm(install, 0, key, config=text, name=name, wait=False))
        for proc in started:
            ctx.procs.ready(proc)
    except procs.StartError as exc:
        for proc in started:
            ctx.procs.stop(proc)
        return {"unavailable": f"LiteLLM {procs.LITELLM_VERSION} did not start: {exc}"[:600]}
    lb = fleet.start_lb("lb-litellm", [], [p.port for p in started], "/health/liveliness")
    try:
        warm = run_open([(0.0, request_spec(lb.port, key, "fast", False), 15.0)])
        out = _drive(ctx, lb.port, key, seconds, rate, "3 proxies, one Redis")
        # One proxy alone, the same demand, the next minute: whether the limit holds at all.
        out["alone"] = _drive(ctx, started[0].port, key, seconds, rate, "one proxy alone", True)
    finally:
        ctx.procs.stop(lb)
        for proc in started:
            ctx.procs.stop(proc)
    return out | {"limit": tpm, "rate_per_s": rate, "seconds": seconds,
                  "warm_status": warm[0].status if warm else None}  # fmt: skip


def _drive(
    ctx: Context, port: int, key: str, seconds: float, rate: float, what: str, fresh: bool = False
) -> Result:
    """``rate`` requests/s for ``seconds``, all inside one minute of the clock (``fresh``: a
    minute nothing was sent in yet, so its counters start at zero)."""
    spec = request_spec(port, key, "fast", False)
    wait = _next_minute()
    if fresh or seconds + 0.5 > wait - 0.2:  # the run must fit in one minute
        ctx.log(f"[replicas] LiteLLM: waiting {wait:.0f}s for the minute to turn")
        time.sleep(wait)
    n = int(rate * seconds)
    requests: list[tuple[float, LoadSpec, float]] = [(i / rate, spec, 15.0) for i in range(n)]
    ctx.log(f"[replicas] LiteLLM deployment tpm, {what}: {n} requests over {seconds:g}s")
    out = count([outcome(x) for x in run_open(requests)])
    ctx.log(f"[replicas] LiteLLM deployment tpm, {what}: {out['tokens']} tokens answered")
    return out
