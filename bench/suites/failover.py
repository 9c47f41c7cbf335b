"""Failover: what a client sees when an upstream fails, through nobusy and through LiteLLM.

Four measurements, the same faults for both gateways (issue 4's benchmarks):

1. *Failover before the first token*: a refused connection, 503, 429 with ``Retry-After: 30``,
   a hang before the headers, keep-alive comments only. The client's time to first token
   through the gateway, minus the backup's own time to first token served directly.
2. *Mid-stream cut*: the upstream drops after 5 tokens; the gap at the client between the
   last token before the cut and the next one, minus the backup's own time to first token,
   and whether the client's text equals the healthy answer.
3. *Retry amplification*: a steady load on an alias whose first upstream fails every 2nd
   request with 503; upstream calls per client request, counted by the fakes themselves.
4. *Hedging*: an alias whose first upstream is slow on 2% of requests, with and without
   ``hedge``; time to first token and the extra upstream requests hedging cost.

Four fake upstreams take part, so that each one's request counter means one thing:
``faults`` (every fault of 1 and 2), ``backup`` (the route that answers after them),
``load`` (the flaky and the slowish upstream of 3 and 4) and ``spare`` (their next route).
LiteLLM requests that never end (keep-alive comments only; 429 under LiteLLM's default
retries) run in a background thread for the whole suite, each capped.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.loadgen import LoadSpec, Timeline, chat_body, percentile, run_load, run_timed
from bench.suites.base import (
    Context,
    Goal,
    Result,
    Suite,
    at_least,
    at_most,
    fmt,
    md_table,
)
from nobusy.fake_upstream import answer_text

PROMPT = "Hello"
MESSAGES = [{"role": "user", "content": PROMPT}]
FIRST_TOKEN_TIMEOUT = 1.0  # seconds: nobusy's first_token_timeout, LiteLLM's (stream_)timeout
CUT_AFTER = 5  # tokens sent before the mid-stream cut
CHUNK_DELAY = 0.02  # seconds between the cut stream's tokens, so "last token" is a moment
FAST_FAULTS = ("refused", "503", "429")
SLOW_FAULTS = ("hang", "keepalive")
FAULTS = FAST_FAULTS + SLOW_FAULTS
SLOW_EVERY, SLOW_DELAY = 50, 0.3  # the hedging upstream: every 50th request waits 0.3 s
GATEWAYS = ("nobusy", "litellm")

# The fake's model string per fault: the fake picks its behaviour from it.
FAULT_MODES = {
    "refused": "ok",  # served at a port nothing listens on
    "503": "http503:retry_after=-1",  # no Retry-After: plain "server busy"
    "429": "http429:retry_after=30",
    "hang": "hang",
    "keepalive": "keepalive",
    "drop": f"drop:drop_after={CUT_AFTER},chunk_delay={CHUNK_DELAY}",
}
FLAKY = "http503:fail_every=2,retry_after=-1"
SLOWISH = f"ok:delay={SLOW_DELAY},slow_every={SLOW_EVERY}"
FAULT_LABELS = {
    "refused": "connection refused",
    "503": "HTTP 503",
    "429": "HTTP 429, Retry-After: 30",
    "hang": "hang before headers",
    "keepalive": "keep-alive comments only",
    "drop": "cut after 5 tokens",
}


def _name(fault: str, stream: bool) -> str:
    """One upstream (and alias) per fault and mode: each has its own retry budget."""
    return f"f{fault}-{'s' if stream else 'n'}"


def _plan(quick: bool) -> dict[str, Any]:
    return {
        "reps": 5 if quick else 9,  # per fault and mode: nobusy's retry budget allows 10 + 10%
        "cap_s": 31.0 if quick else 40.0,  # LiteLLM requests that may never end: past 30 s
        "load_s": 3.0 if quick else 10.0,  # retry amplification, per gateway
        "hedge_s": 2.5 if quick else 6.0,  # hedging, per alias
        "concurrency": 8,
        "hedge_concurrency": 4,
        "stagger_s": 0.06,  # between the 1 s faults sent together
    }


# --- configurations ---------------------------------------------------------------------------


def _url(port: int) -> str:
    return f"http://{procs.HOST}:{port}/v1"


def nobusy_yaml(ports: dict[str, int]) -> str:
    lines = ["upstreams:"]
    lines.append(
        f'  backup: {{kind: openai, base_url: "{_url(ports["backup"])}", default_model: ok, '
        "continuation: prefix}"
    )
    for fault in (*FAULTS, "drop"):
        port = ports["dead"] if fault == "refused" else ports["faults"]
        extra = f", first_token_timeout: {FIRST_TOKEN_TIMEOUT:g}" if fault in SLOW_FAULTS else ""
        for stream in (False, True):
            lines.append(
                f'  {_name(fault, stream)}: {{kind: openai, base_url: "{_url(port)}", '
                f'default_model: "{FAULT_MODES[fault]}"{extra}}}'
            )
    lines.append(
        f'  flaky: {{kind: openai, base_url: "{_url(ports["load"])}", default_model: "{FLAKY}"}}'
    )
    lines.append(
        f'  slowish: {{kind: openai, base_url: "{_url(ports["load"])}", '
        f'default_model: "{SLOWISH}"}}'
    )
    lines.append(
        f'  spare: {{kind: openai, base_url: "{_url(ports["spare"])}", default_model: ok, '
        "continuation: prefix}"
    )
    lines.append("models:")
    lines.append("  backup: [backup]")
    for fault in (*FAULTS, "drop"):
        for stream in (False, True):
            lines.append(f"  {_name(fault, stream)}: [{_name(fault, stream)}, backup]")
    lines.append("  flaky: [flaky, spare]")
    lines.append("  unhedged: [slowish, spare]")
    lines.append("  hedged: {routes: [slowish, spare], hedge: {after: p95, budget: 0.05}}")
    return "\n".join(lines) + "\n"


def _deployment(name: str, mode: str, port: int, **params: object) -> list[str]:
    extra = "".join(f", {k}: {v}" for k, v in params.items())
    return [
        f"  - model_name: {name}",
        f'    litellm_params: {{model: "openai/{mode}", api_base: "{_url(port)}", '
        f"api_key: x{extra}}}",
    ]


def litellm_yaml(ports: dict[str, int]) -> str:
    """The same routes for LiteLLM: a deployment per fault, fallbacks to the backup."""
    lines = ["model_list:"]
    lines += _deployment("backup", "ok", ports["backup"])
    fallbacks: list[str] = []
    for fault in (*FAULTS, "drop"):
        port = ports["dead"] if fault == "refused" else ports["faults"]
        # LiteLLM's first-token budget: `timeout` for the whole non-streaming call and
        # `stream_timeout` for a stream's first chunk (docs.litellm.ai/docs/proxy/timeout).
        params: dict[str, object] = {}
        if fault in SLOW_FAULTS:
            params = {"timeout": FIRST_TOKEN_TIMEOUT, "stream_timeout": FIRST_TOKEN_TIMEOUT}
        for stream in (False, True):
            lines += _deployment(_name(fault, stream), FAULT_MODES[fault], port, **params)
            fallbacks.append(f"{_name(fault, stream)}: [backup]")
    # The 429 again with LiteLLM's default retries (num_retries 2), set on the deployment.
    for stream in (False, True):
        name = f"f429default-{'s' if stream else 'n'}"
        lines += _deployment(name, FAULT_MODES["429"], ports["faults"], num_retries=2)
        fallbacks.append(f"{name}: [backup]")
    lines += _deployment("flaky", FLAKY, ports["load"])
    lines += _deployment("spare", "ok", ports["spare"])
    fallbacks.append("flaky: [spare]")
    lines.append("router_settings:")
    lines.append("  num_retries: 0  # fall back at once instead of retrying the failed deployment")
    lines.append("  fallbacks:")
    lines += [f"    - {{{f}}}" for f in fallbacks]
    return "\n".join(lines) + "\n"


# --- one request, read token by token ---------------------------------------------------------


def _spec(ctx: Context, port: int, model: str, stream: bool) -> LoadSpec:
    body = json.dumps(chat_body(model, stream, PROMPT)).encode()
    return LoadSpec(port, body, stream, ctx.headers)


def _events(timeline: Timeline) -> list[tuple[float, Any]]:
    """The SSE ``data:`` payloads of a streamed body, each with the time it was complete."""
    out: list[tuple[float, Any]] = []
    buf = b""
    for at, piece in timeline.pieces:
        buf += piece.replace(b"\r\n", b"\n")
        while b"\n\n" in buf:
            raw, buf = buf.split(b"\n\n", 1)
            data = b"\n".join(
                line[5:].lstrip() for line in raw.split(b"\n") if line.startswith(b"data:")
            )
            if not data or data == b"[DONE]":
                continue
            try:
                out.append((at, json.loads(data)))
            except ValueError:
                out.append((at, {"error": {"message": f"bad JSON event: {data[:80]!r}"}}))
    return out


def _error_text(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or error)[:240]
    return str(error or payload)[:240]


def read(timeline: Timeline, stream: bool, expected: str) -> Result:
    """What the client got: time to first token (streams) or to the answer, tokens, outcome."""
    sample: Result = {
        "status": timeline.status,
        "elapsed_ms": timeline.elapsed * 1000,
        "ttft_ms": None,
        "tokens": [],
        "text": "",
        "ok": False,
        "outcome": "",
    }
    error = timeline.error
    if stream and timeline.status == 200:
        tokens: list[tuple[float, str]] = []
        for at, payload in _events(timeline):
            if not isinstance(payload, dict):
                continue
            if "error" in payload:
                error = error or f"error event: {_error_text(payload)}"
                continue
            for choice in payload.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    tokens.append((at, content))
        sample["tokens"] = [[round(at * 1000, 3), text] for at, text in tokens]
        sample["text"] = "".join(text for _, text in tokens)
        if tokens:
            sample["ttft_ms"] = tokens[0][0] * 1000
    elif timeline.status == 200 and timeline.complete:
        try:
            answer = json.loads(timeline.body)
            sample["text"] = answer["choices"][0]["message"]["content"] or ""
            sample["ttft_ms"] = timeline.pieces[-1][0] * 1000
        except (ValueError, KeyError, IndexError, TypeError):
            error = error or f"unreadable body: {timeline.body[:120]!r}"
    elif timeline.status:
        try:
            message = _error_text(json.loads(timeline.body))
        except ValueError:
            message = timeline.body[:120].decode("utf-8", "replace")
        error = error or f"HTTP {timeline.status}: {message}"
    sample["ok"] = error is None and sample["text"] == expected
    if sample["ok"]:
        sample["outcome"] = "answered"
    elif error is not None:
        got = len(sample["tokens"]) if stream else 0
        sample["outcome"] = f"{got} tokens, then {error}" if got else error
    else:
        sample["outcome"] = f"wrong text: {sample['text'][:80]!r}"
    return sample


def one(ctx: Context, port: int, model: str, stream: bool, timeout: float = 15.0) -> Result:
    expected = answer_text(MESSAGES, ctx.settings.tokens)
    [timeline] = run_timed([(0.0, _spec(ctx, port, model, stream))], timeout)
    return read(timeline, stream, expected)


def batch(
    ctx: Context, requests: list[tuple[float, int, str, bool]], timeout: float
) -> list[Result]:
    """Requests sent together, each ``after`` seconds from now: (after, port, model, stream)."""
    expected = answer_text(MESSAGES, ctx.settings.tokens)
    specs = [(after, _spec(ctx, port, model, stream)) for after, port, model, stream in requests]
    timelines = run_timed(specs, timeout)
    return [read(t, r[3], expected) for t, r in zip(timelines, requests, strict=True)]


# --- the run ------------------------------------------------------------------------------------

Request = tuple[float, int, str, bool]  # (seconds from now, port, model, stream)


@dataclass
class _Setup:
    """What the phases share: the processes, their ports, the samples measured so far."""

    ctx: Context
    plan: dict[str, Any]
    ports: dict[str, int]  # the fakes by role, and "dead": a port nothing listens on
    gateways: dict[str, int]  # gateway name -> port
    nobusy: procs.Proc
    litellm: procs.Proc | None
    errors: dict[str, str]
    samples: dict[str, list[Result]] = field(default_factory=dict)

    def add(self, key: str, sample: Result) -> None:
        """Record a sample under ``gateway/fault/mode``; token times only where needed."""
        if "/drop/" not in key:
            sample["tokens"] = len(sample["tokens"])
        sample.pop("text", None)  # the verdict is in "ok"
        self.samples.setdefault(key, []).append(sample)


class _Background:
    """Requests through LiteLLM that may run to their cap, sent while the rest is measured."""

    def __init__(self, ctx: Context, requests: list[tuple[str, Request]], cap: float) -> None:
        self.keys = [key for key, _ in requests]
        self.results: list[Result] = []
        self.error: str | None = None

        def work() -> None:
            try:
                self.results = batch(ctx, [r for _, r in requests], cap)
            except Exception as exc:  # a report beats a crash in a thread nobody joins
                self.error = repr(exc)

        self.thread = threading.Thread(target=work, name="litellm-long", daemon=True)
        self.thread.start()

    def join(self) -> list[tuple[str, Result]]:
        self.thread.join()
        return list(zip(self.keys, self.results, strict=False))


def _reset_circuit(port: int, upstream: str) -> None:
    procs.http_call(port, "POST", f"/v1/nobusy/upstreams/{upstream}/reset")


def _nobusy_view(port: int, upstreams: tuple[str, ...]) -> dict[str, Any]:
    """nobusy's admin view of some upstreams: circuit state, ejections, in flight."""
    status, body = procs.http_call(port, "GET", "/v1/nobusy/upstreams")
    if status != 200:
        return {}
    keep = ("state", "ejections", "in_flight", "attempts", "failures", "concurrency")
    return {
        u["name"]: {k: u.get(k) for k in keep}
        for u in json.loads(body).get("data", [])
        if u.get("name") in upstreams
    }


def _fake_stats(port: int) -> dict[str, int]:
    status, body = procs.http_call(port, "GET", "/_fake/stats")
    return json.loads(body) if status == 200 else {}


def _fake_reset(*ports: int) -> None:
    for port in ports:
        procs.http_call(port, "POST", "/_fake/reset")


def _start(ctx: Context) -> _Setup:
    """Four fakes, nobusy and LiteLLM (if it installs and starts) with the same routes."""
    fakes = {
        role: ctx.procs.fake_upstream(ctx.settings.tokens, name=f"fake-{role}")
        for role in ("faults", "backup", "load", "spare")
    }
    ports = {role: proc.port for role, proc in fakes.items()} | {"dead": procs.free_port()}
    nobusy = ctx.procs.nobusy("nobusy-failover", None, config=nobusy_yaml(ports))
    setup = _Setup(ctx, _plan(ctx.settings.quick), ports, {"nobusy": nobusy.port}, nobusy, None, {})
    install = ctx.litellm()
    if not install.ok:
        reason = f"LiteLLM {procs.LITELLM_VERSION} could not be installed: {install.error}"
        setup.errors["litellm"] = reason
    else:
        try:
            setup.litellm = ctx.procs.litellm(
                install, 0, ctx.key, config=litellm_yaml(ports), name="litellm-failover"
            )
            setup.gateways["litellm"] = setup.litellm.port
        except procs.StartError as exc:
            setup.errors["litellm"] = f"LiteLLM proxy did not start: {exc}"
    if "litellm" in setup.errors:
        ctx.log(f"[failover] {setup.errors['litellm'].splitlines()[0]}; measuring nobusy alone")
    return setup


def _launch_background(setup: _Setup) -> _Background | None:
    """LiteLLM's requests that may never end: keep-alive only, and the 429 under default
    retries. They run to their cap while everything else is measured."""
    port = setup.gateways.get("litellm")
    if port is None:
        return None
    long: list[tuple[str, Request]] = []
    for stream in (False, True):
        mode = "s" if stream else "n"
        long.append((f"429default/{mode}", (0.1 * len(long), port, f"f429default-{mode}", stream)))
        for _ in range(min(setup.plan["reps"], 3)):
            after = 0.1 * len(long)
            long.append((f"keepalive/{mode}", (after, port, _name("keepalive", stream), stream)))
    setup.ctx.log(f"[failover] {len(long)} LiteLLM requests that may never end: in the background")
    return _Background(setup.ctx, long, setup.plan["cap_s"])


def _warm_up(setup: _Setup) -> None:
    """Connection pools, imports on first use: three healthy requests per path and mode."""
    for _ in range(3):
        for stream in (False, True):
            one(setup.ctx, setup.ports["backup"], "ok", stream)
            for port in setup.gateways.values():
                one(setup.ctx, port, "backup", stream)


def _fast_faults(setup: _Setup) -> None:
    """Refused, 503, 429 in rounds: direct to the backup, each gateway's healthy path, then
    each fault. nobusy's circuit is closed again before each fault request, so that each one
    meets the fault rather than skipping an upstream ejected by the one before."""
    ctx, reps = setup.ctx, setup.plan["reps"]
    for rep in range(reps + 1):
        for stream in (False, True):
            mode = "s" if stream else "n"
            # The baseline every figure subtracts: three samples a round, so one slow
            # sample on a busy machine does not move the median.
            rows = [
                (f"direct/backup/{mode}", one(ctx, setup.ports["backup"], "ok", stream))
                for _ in range(3)
            ]
            for gateway, port in setup.gateways.items():
                rows.append((f"{gateway}/backup/{mode}", one(ctx, port, "backup", stream)))
                for fault in FAST_FAULTS:
                    name = _name(fault, stream)
                    if gateway == "nobusy":
                        _reset_circuit(port, name)
                    rows.append((f"{gateway}/{fault}/{mode}", one(ctx, port, name, stream)))
            if rep:  # the first round only warms up
                for key, sample in rows:
                    setup.add(key, sample)
    ctx.log(f"[failover] before the first token: {reps} rounds of refused, 503, 429 done")


def _slow_faults(setup: _Setup) -> None:
    """Hang and keep-alive (1 s each), sent together but staggered so that no two fail over
    at once. LiteLLM's keep-alive requests are in the background instead."""
    slow: list[tuple[str, Request]] = []
    for _ in range(setup.plan["reps"]):
        for stream in (False, True):
            mode = "s" if stream else "n"
            for gateway, port in setup.gateways.items():
                for fault in SLOW_FAULTS:
                    if gateway == "litellm" and fault == "keepalive":
                        continue
                    after = setup.plan["stagger_s"] * len(slow)
                    request = (after, port, _name(fault, stream), stream)
                    slow.append((f"{gateway}/{fault}/{mode}", request))
    results = batch(setup.ctx, [r for _, r in slow], 15.0)
    for (key, _), sample in zip(slow, results, strict=True):
        setup.add(key, sample)
    procs.http_call(setup.nobusy.port, "POST", "/v1/nobusy/upstreams/all/reset")
    setup.ctx.log(f"[failover] hang and keep-alive: {len(slow)} requests done")


def _cut(setup: _Setup) -> None:
    """The stream cut after 5 tokens, a warm-up round then ``reps`` rounds."""
    for rep in range(setup.plan["reps"] + 1):
        for stream in (False, True):
            mode = "s" if stream else "n"
            for gateway, port in setup.gateways.items():
                name = _name("drop", stream)
                if gateway == "nobusy":
                    _reset_circuit(port, name)
                sample = one(setup.ctx, port, name, stream)
                if rep:
                    setup.add(f"{gateway}/drop/{mode}", sample)
    setup.ctx.log("[failover] mid-stream cut done")


def _amplification(setup: _Setup) -> dict[str, Result]:
    """A steady load on ``[flaky, spare]``, flaky failing every 2nd call; the fakes count."""
    out: dict[str, Result] = {}
    load_port, spare_port = setup.ports["load"], setup.ports["spare"]
    for gateway, port in setup.gateways.items():
        _fake_reset(load_port, spare_port)
        load = run_load(
            _spec(setup.ctx, port, "flaky", True),
            setup.plan["concurrency"],
            duration=setup.plan["load_s"],
            warmup=0.0,
            keep_records=True,
        )
        time.sleep(0.2)  # let the fakes see the last requests end
        sent = len(load.records)
        good = sum(1 for r in load.records if r.status == 200 and r.ttft is not None)
        flaky = _fake_stats(load_port).get("requests", 0)
        spare = _fake_stats(spare_port).get("requests", 0)
        statuses: dict[str, int] = {}
        for record in load.records:
            statuses[str(record.status)] = statuses.get(str(record.status), 0) + 1
        out[gateway] = {
            "requests": sent,
            "answered": good,
            "statuses": statuses,
            "duration_s": load.duration,
            "upstream_calls": {"flaky": flaky, "spare": spare},
            "calls_per_request": (flaky + spare) / sent if sent else None,
            "success_rate": good / sent if sent else None,
            "rps": sent / load.duration if load.duration else None,
        }
        if gateway == "nobusy":
            out[gateway]["nobusy_view"] = _nobusy_view(port, ("flaky", "spare"))
        setup.ctx.log(
            f"[failover] 50% failing upstream via {gateway}: {sent} requests, "
            f"{flaky}+{spare} upstream calls, {good} answered"
        )
    return out


def _hedging(setup: _Setup) -> dict[str, Result]:
    """nobusy only: the same routes without and with ``hedge``, one after the other."""
    out: dict[str, Result] = {}
    load_port, spare_port = setup.ports["load"], setup.ports["spare"]
    for alias in ("unhedged", "hedged"):
        _fake_reset(load_port, spare_port)
        load = run_load(
            _spec(setup.ctx, setup.nobusy.port, alias, True),
            setup.plan["hedge_concurrency"],
            duration=setup.plan["hedge_s"],
            warmup=0.3,
            keep_records=True,
        )
        time.sleep(0.2)
        sent = len(load.records)
        first = _fake_stats(load_port).get("requests", 0)
        second = _fake_stats(spare_port).get("requests", 0)
        ttft = load.ttft
        out[alias] = {
            "requests": sent,
            "errors": load.errors,
            "upstream_calls": {"slowish": first, "spare": second},
            "extra_share": (first + second - sent) / sent if sent else None,
            "ttft_ms": None
            if ttft is None
            else {k: getattr(ttft, k) * 1000 for k in ("p50", "p90", "p99", "max")},
            "ttft_count": None if ttft is None else ttft.count,
            "rps": load.rps,
            # nobusy's own view once every client is done: in_flight should be back at 0.
            "nobusy_view": _nobusy_view(setup.nobusy.port, ("slowish", "spare")),
        }
        setup.ctx.log(f"[failover] {alias}: {sent} requests, {first}+{second} upstream calls")
    return out


def _finish_background(setup: _Setup, background: _Background | None) -> int | None:
    """Collect LiteLLM's long requests; return what is still open at the faults' fake."""
    if background is None:
        return None
    setup.ctx.log("[failover] waiting for LiteLLM's background requests to reach their cap")
    for key, sample in background.join():
        setup.add(f"litellm/{key}", sample)
    if background.error:
        setup.errors["litellm-background"] = background.error
    time.sleep(1.0)
    leftover = _fake_stats(setup.ports["faults"]).get("in_flight", 0)
    if setup.litellm is not None:
        # LiteLLM keeps a non-streaming request to a keep-alive-only upstream open after its
        # client left, and waits for it on SIGTERM: no point waiting the usual 10 s.
        setup.ctx.procs.stop(setup.litellm, timeout=2.0)
    return leftover


def run(ctx: Context) -> Result:
    setup = _start(ctx)
    background = _launch_background(setup)
    _warm_up(setup)
    _fast_faults(setup)
    _slow_faults(setup)
    _cut(setup)
    amplification = _amplification(setup)
    hedging = _hedging(setup)
    leftover = _finish_background(setup, background)
    return {
        "plan": setup.plan,
        "first_token_timeout_s": FIRST_TOKEN_TIMEOUT,
        "fault_modes": FAULT_MODES | {"flaky": FLAKY, "slowish": SLOWISH},
        "gateways": list(setup.gateways),
        "errors": setup.errors,
        "litellm": {"version": procs.LITELLM_VERSION, "config": litellm_yaml(setup.ports)},
        "nobusy_config": nobusy_yaml(setup.ports),
        "samples": setup.samples,
        "amplification": amplification,
        "hedging": hedging,
        "faults_fake_in_flight_at_end": leftover,
    }


# --- figures from the raw samples -------------------------------------------------------------


def _values(samples: list[Result], pick: Callable[[Result], float | None]) -> list[float]:
    return sorted(v for v in (pick(s) for s in samples) if v is not None)


def _p50(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _p95(values: list[float]) -> float | None:
    return percentile(values, 95) if values else None


def _direct_ttft(result: Result, mode: str) -> float | None:
    return _p50(_values(result["samples"].get(f"direct/backup/{mode}", []), _ttft))


def _ttft(sample: Result) -> float | None:
    return sample["ttft_ms"] if sample["ok"] else None


def _gap(sample: Result) -> float | None:
    """Milliseconds between the last token before the cut and the first one after it."""
    tokens = sample["tokens"]
    if not sample["ok"] or len(tokens) <= CUT_AFTER:
        return None
    return float(tokens[CUT_AFTER][0] - tokens[CUT_AFTER - 1][0])


def fault_row(result: Result, gateway: str, fault: str, mode: str) -> Result | None:
    """Figures for one gateway, fault and mode; added = minus the backup's direct TTFT."""
    found = result["samples"].get(f"{gateway}/{fault}/{mode}")
    if not found:
        return None
    base = _direct_ttft(result, mode) or 0.0
    ttft = _values(found, _ttft)
    added = [v - base for v in ttft]
    outcomes: dict[str, int] = {}
    for sample in found:
        if not sample["ok"]:
            outcomes[sample["outcome"]] = outcomes.get(sample["outcome"], 0) + 1
    failed = [s for s in found if not s["ok"]]
    return {
        "n": len(found),
        "answered": len(ttft),
        "ttft_p50": _p50(ttft),
        "ttft_p95": _p95(ttft),
        "added_p50": _p50(added),
        "added_p95": _p95(added),
        "failed_elapsed_p50": _p50(_values(failed, lambda s: s["elapsed_ms"])),
        "outcomes": outcomes,
    }


def cut_row(result: Result, gateway: str, mode: str) -> Result | None:
    found = result["samples"].get(f"{gateway}/drop/{mode}")
    if not found:
        return None
    base = _direct_ttft(result, "s") or 0.0
    gaps = _values(found, _gap)
    outcomes: dict[str, int] = {}
    for sample in found:
        if not sample["ok"]:
            outcomes[sample["outcome"]] = outcomes.get(sample["outcome"], 0) + 1
    return {
        "n": len(found),
        "identical": sum(1 for s in found if s["ok"]),
        "gap_p50": _p50(gaps),
        "gap_p95": _p95(gaps),
        "added_p50": None if not gaps else _p50([g - base for g in gaps]),
        "added_p95": None if not gaps else _p95([g - base for g in gaps]),
        "latency_p50": _p50(_values(found, lambda s: s["elapsed_ms"])),
        "tokens_p50": _p50(_values(found, lambda s: float(len(s["tokens"])))),
        "outcomes": outcomes,
    }


def _beyond_timeout(row: Result | None) -> float | None:
    """Median TTFT past the first-token budget (the direct backup's TTFT included)."""
    if row is None or row["ttft_p50"] is None:
        return None
    return float(row["ttft_p50"]) - 1000 * FIRST_TOKEN_TIMEOUT


def _worst(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


# --- goals and the page -----------------------------------------------------------------------


def goals(result: Result) -> list[Goal]:
    if result.get("crashed"):
        return []
    fast = [
        (fault_row(result, "nobusy", f, m) or {}).get("added_p50")
        for f in FAST_FAULTS
        for m in ("s", "n")
    ]
    slow = [
        _beyond_timeout(fault_row(result, "nobusy", f, m)) for f in SLOW_FAULTS for m in ("s", "n")
    ]
    cut = cut_row(result, "nobusy", "s") or {}
    cuts = [cut_row(result, "nobusy", m) or {} for m in ("s", "n")]
    identical = sum(c.get("identical", 0) for c in cuts)
    total = sum(c.get("n", 0) for c in cuts)
    amp = result.get("amplification", {}).get("nobusy", {})
    hedge = result.get("hedging", {}).get("hedged", {})
    success = amp.get("success_rate")
    share = hedge.get("extra_share")
    return [
        at_most(
            "Failover before the first token (refused, 503, 429): added TTFT, worst median",
            _worst(fast),
            50,
            "ms",
        ),
        at_most(
            "Hang / keep-alive only: TTFT beyond first_token_timeout, worst median",
            _worst(slow),
            50,
            "ms",
        ),
        at_most(
            "Mid-stream cut: gap at the client minus the backup's TTFT, median",
            cut.get("added_p50"),
            100,
            "ms",
        ),
        at_least(
            "Mid-stream cut: answers identical to the healthy one",
            identical / total * 100 if total else None,
            100,
            "%",
        ),
        at_most(
            "Upstream calls per request, first upstream failing 50%",
            amp.get("calls_per_request"),
            1.1,
            "×",
        ),
        at_least(
            "Client success rate, first upstream failing 50%",
            None if success is None else success * 100,
            99.9,
            "%",
        ),
        at_most(
            "Hedging: extra upstream requests",
            None if share is None else share * 100,
            5,
            "%",
        ),
    ]


def _outcome_text(row: Result | None) -> str:
    if row is None:
        return "not measured"
    if not row["outcomes"]:
        return f"answered {row['answered']}/{row['n']}"
    parts = [f"{count}× {_short(text)}" for text, count in row["outcomes"].items()]
    text = "; ".join(parts)
    if row["answered"]:
        text = f"answered {row['answered']}/{row['n']}; " + text
    return text.replace("|", "\\|")


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ratio(mine: float | None, other: float | None) -> str:
    if mine is None or other is None or mine <= 0:
        return "—"
    return f"{other / mine:,.1f}×"


def render(result: Result, img: Path) -> str:
    if result.get("crashed"):
        return "The suite crashed; see the raw result."
    plan = result["plan"]
    cap = plan["cap_s"]
    has_litellm = "litellm" in result["gateways"]
    parts = [
        "Four fake upstreams on this machine inject the faults (`nobusy fake-upstream`, the "
        "fault chosen by the route's model name). nobusy and LiteLLM get the same routes: an "
        "alias per fault whose first route is the faulty upstream and whose second is a "
        "healthy `backup`. Each fault is measured streaming (time to the first content token) "
        f"and non-streaming (time to the whole answer), {plan['reps']} times after a warm-up "
        "round. *added* is the time through the gateway minus the backup's own time served "
        "directly (the median of three samples per round, all rounds); *no fault* is the "
        "backup through the gateway. "
        f"nobusy's circuit for the faulty upstream is reset before each request, so every "
        "request meets the fault (otherwise the second request would skip the ejected "
        f"upstream). LiteLLM requests are cut off by the client after {cap:g} s.",
    ]
    for name, error in result.get("errors", {}).items():
        parts.append(f"**{name}**: {error.strip().splitlines()[0] if error.strip() else error}")

    # 1. before the first token
    headers = ["fault", "mode", "direct backup", "nobusy p50", "nobusy p95", "nobusy added p50"]
    headers += ["nobusy added p95", "nobusy outcome"]
    if has_litellm:
        headers += ["LiteLLM p50", "LiteLLM added p50", "LiteLLM outcome", "LiteLLM ÷ nobusy"]
    body = []
    for fault in ("backup", *FAULTS):
        for mode, label in (("s", "stream"), ("n", "non-stream")):
            direct = _direct_ttft(result, mode)
            mine = fault_row(result, "nobusy", fault, mode)
            line = [
                "no fault" if fault == "backup" else FAULT_LABELS[fault],
                label,
                fmt(direct),
                fmt((mine or {}).get("ttft_p50")),
                fmt((mine or {}).get("ttft_p95")),
                fmt((mine or {}).get("added_p50")),
                fmt((mine or {}).get("added_p95")),
                _outcome_text(mine),
            ]
            if has_litellm:
                other = fault_row(result, "litellm", fault, mode)
                line += [
                    fmt((other or {}).get("ttft_p50")),
                    fmt((other or {}).get("added_p50")),
                    _outcome_text(other),
                    _ratio((mine or {}).get("ttft_p50"), (other or {}).get("ttft_p50")),
                ]
            body.append(line)
    parts.append(
        "### Failover before the first token\n\n"
        f"Times in ms. Hang and keep-alive use a first-token budget of "
        f"{result['first_token_timeout_s']:g} s on both gateways, so their floor is "
        f"{result['first_token_timeout_s'] * 1000:,.0f} ms. *LiteLLM ÷ nobusy* compares the "
        "p50 times of answered requests.\n\n"
        + md_table(headers, body, "ll" + "r" * 5 + "l" + ("rrlr" if has_litellm else ""))
    )
    if has_litellm:
        rows = []
        for mode, label in (("s", "stream"), ("n", "non-stream")):
            for sample in result["samples"].get(f"litellm/429default/{mode}", []):
                rows.append(
                    [label, fmt(sample["elapsed_ms"] / 1000, 1) + " s", _one_outcome(sample)]
                )
        if rows:
            parts.append(
                "The same 429 (`Retry-After: 30`) through LiteLLM with its default "
                "`num_retries` (2) instead of 0:\n\n"
                + md_table(["mode", "client waited", "outcome"], rows, "lrl")
            )

    # 2. mid-stream cut
    headers = ["gateway", "mode", "gap p50", "gap p95", "gap − backup TTFT p50"]
    headers += ["p95", "total p50", "identical answers", "what the client got"]
    body = []
    for gateway in result["gateways"]:
        for mode, label in (("s", "stream"), ("n", "non-stream")):
            row = cut_row(result, gateway, mode)
            if row is None:
                continue
            body.append(
                [
                    gateway,
                    label,
                    fmt(row["gap_p50"]) if mode == "s" else "—",
                    fmt(row["gap_p95"]) if mode == "s" else "—",
                    fmt(row["added_p50"]) if mode == "s" else "—",
                    fmt(row["added_p95"]) if mode == "s" else "—",
                    fmt(row["latency_p50"]),
                    f"{row['identical']}/{row['n']}",
                    _outcome_text(row | {"answered": row["identical"]}),
                ]
            )
    parts.append(
        "### Mid-stream cut\n\n"
        f"The faulty upstream streams {CUT_AFTER} tokens {CHUNK_DELAY * 1000:g} ms apart, then "
        "drops the connection. *gap* is the client's wait between the last token before the "
        "cut and the next one (streaming); *identical* counts answers equal to the healthy "
        "one. nobusy's backup continues the partial answer (`continuation: prefix`). "
        "Non-streaming, nobusy still streams from the upstream; LiteLLM asks for a "
        "non-streamed body, which the fake cuts in half. Times in ms.\n\n"
        + md_table(headers, body, "ll" + "r" * 6 + "l")
    )

    # 3. amplification
    body = []
    amp = result.get("amplification", {})
    for gateway in result["gateways"]:
        row = amp.get(gateway)
        if not row:
            continue
        calls = row["upstream_calls"]
        body.append(
            [
                gateway,
                f"{row['requests']:,}",
                fmt(row["rps"], 0),
                f"{calls['flaky']:,}",
                f"{calls['spare']:,}",
                fmt(row["calls_per_request"], 3, "×"),
                fmt(None if row["success_rate"] is None else row["success_rate"] * 100, 2, "%"),
            ]
        )
    parts.append(
        "### Retry amplification\n\n"
        f"Alias `[flaky, spare]`; `flaky` answers every 2nd request with 503 (no "
        f"Retry-After). {plan['concurrency']} streaming clients for {plan['load_s']:g} s per "
        "gateway; upstream calls are the fakes' own request counters.\n\n"
        + md_table(
            ["gateway", "client requests", "req/s", "calls to flaky", "calls to spare"]
            + ["calls per request", "answered"],
            body,
        )
    )
    mine = amp.get("nobusy") or {}
    view = (mine.get("nobusy_view") or {}).get("flaky")
    if view:
        refused = {k: v for k, v in mine.get("statuses", {}).items() if k != "200"}
        text = (
            f"After the run nobusy's circuit for `flaky` was *{view.get('state')}* "
            f"({view.get('ejections')} ejection(s); {view.get('failures')} failures in "
            f"{view.get('attempts')} attempts)"
        )
        if refused:
            got = ", ".join(f"{n:,}× HTTP {code}" for code, n in refused.items())
            text += f"; clients got {got} instead of an answer"
        parts.append(text + ".")

    # 4. hedging
    hedging = result.get("hedging", {})
    body = []
    for alias in ("unhedged", "hedged"):
        row = hedging.get(alias)
        if not row:
            continue
        ttft = row["ttft_ms"] or {}
        calls = row["upstream_calls"]
        body.append(
            [
                "without `hedge`" if alias == "unhedged" else "`hedge: {after: p95, budget: 0.05}`",
                f"{row['requests']:,}",
                fmt(row.get("rps"), 0),
                fmt(ttft.get("p50")),
                fmt(ttft.get("p90")),
                fmt(ttft.get("p99")),
                fmt(ttft.get("max")),
                f"{calls['slowish']:,} + {calls['spare']:,}",
                fmt(None if row["extra_share"] is None else row["extra_share"] * 100, 2, "%"),
            ]
        )
    parts.append(
        "### Hedging\n\n"
        f"Alias `[slowish, spare]`; `slowish` delays its first token by {SLOW_DELAY * 1000:g} ms "
        f"on every {SLOW_EVERY}th request ({100 / SLOW_EVERY:g}%). "
        f"{plan['hedge_concurrency']} streaming clients for {plan['hedge_s']:g} s per alias. "
        "TTFT in ms; *extra* is upstream requests beyond one per client request. The load is "
        "a closed loop: without hedging each connection spends most of its time waiting on "
        "the slow 2%, so fewer requests run at once, which flatters its p50; compare the tail. "
        "LiteLLM has no request hedging (its docs and its 1.106.2 source have no such "
        "setting), so it is not measured here.\n\n"
        + md_table(
            ["alias", "requests", "req/s", "TTFT p50", "p90", "p99", "max", "upstream calls"]
            + ["extra"],
            body,
            "lrrrrrrrr",
        )
    )
    leaks = {
        f"{alias}: {name}": view.get("in_flight")
        for alias, row in hedging.items()
        for name, view in (row.get("nobusy_view") or {}).items()
        if view.get("in_flight")
    }
    if leaks:
        listed = ", ".join(f"{k} {v}" for k, v in leaks.items())
        parts.append(
            "After these runs, with every client done, nobusy still counted requests in flight "
            f"(its admin view, per alias run and upstream): {listed}. They should be 0."
        )
    left = result.get("faults_fake_in_flight_at_end")
    if left:
        parts.append(
            f"At the end, {left} request(s) were still open at the faults' fake upstream, 1 s "
            "after every client had gone: upstream requests a gateway did not close when its "
            "client left (nobusy's hang and keep-alive attempts end at their failover, long "
            "before)."
        )
    parts.append(
        "<details><summary>The configurations</summary>\n\n"
        f"nobusy:\n\n```yaml\n{result['nobusy_config']}```\n\n"
        f"LiteLLM {result['litellm']['version']}:\n\n```yaml\n{result['litellm']['config']}```\n"
        "</details>"
    )
    return "\n\n".join(parts)


def _one_outcome(sample: Result) -> str:
    return ("answered" if sample["ok"] else _short(sample["outcome"])).replace("|", "\\|")


SUITE = Suite(
    name="failover",
    title="Failover: faults, cuts, retry amplification and hedging, nobusy and LiteLLM",
    run=run,
    render=render,
    goals=goals,
)
