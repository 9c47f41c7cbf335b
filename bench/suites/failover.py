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
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench import procs
from bench.loadgen import LoadSpec, Timeline, chat_body, run_load, run_timed
from bench.suites.base import (
    Context,
    Result,
    Suite,
)
from bench.suites.failover_report import (
    FAST_FAULTS,
    FAULT_MODES,
    FAULTS,
    FIRST_TOKEN_TIMEOUT,
    FLAKY,
    MESSAGES,
    PROMPT,
    SLOW_FAULTS,
    SLOWISH,
    _name,
    _plan,
    goals,
    render,
)
from nobusy.testing.fake_upstream import answer_text

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


SUITE = Suite(
    name="failover",
    title="Failover: faults, cuts, retry amplification and hedging, nobusy and LiteLLM",
    run=run,
    render=render,
    goals=goals,
)
