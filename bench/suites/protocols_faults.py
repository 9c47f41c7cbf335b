"""Faults × protocols, part of the ``protocols`` suite: every fault scenario of the chat
failover tests and suite, asked through chat completions, the Messages API and the Responses
API, streamed and not, through nobusy (and LiteLLM when it can serve the protocol).

Each scenario is one alias per (scenario, protocol, mode) whose first route fails in the
scenario's way and whose second is healthy, so that no two requests share a circuit or a retry
budget. An answer passes when the client's SDK read a well-formed answer equal to the healthy
one through the same protocol and mode (``protocols_clients.Answer.verdict``).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable

from bench import procs
from bench.suites.base import Context, Result
from bench.suites.failover_report import FAULT_MODES, FIRST_TOKEN_TIMEOUT
from bench.suites.protocols_clients import PROTOCOLS, Answer, Clients, ask
from nobusy.upstreams import settings_class

__all__ = ["MORE", "SCENARIOS", "litellm_yaml", "kinds_served", "measure", "nobusy_yaml"]

# name -> (the faulty route's model at the fake, what the request asks for). The first five and
# drop5 are the failover suite's faults as it sets them; the rest are the chat failover tests'.
SCENARIOS: dict[str, tuple[str, str]] = {
    "refused": (FAULT_MODES["refused"], "text"),
    "503": (FAULT_MODES["503"], "text"),
    "429": (FAULT_MODES["429"], "text"),
    "hang": (FAULT_MODES["hang"], "text"),
    "keepalive": (FAULT_MODES["keepalive"], "text"),
    "drop0": ("drop:drop_after=0", "text"),
    "drop1": ("drop:drop_after=1", "text"),
    "drop5": (FAULT_MODES["drop"], "text"),
    "garbage": ("garbage", "text"),
    "error-in-stream": ("error-in-stream", "text"),
    "slow-drip": ("slow:chunk_delay=1.5", "text"),
    "reasoning-cut": ("reasoning:cut_after=3", "reasoning"),
    "tool-call-cut": ("tool-call:cut_after=2", "tool"),
}
# The chat failover tests' other drills, nobusy only: a cut continued by a route of another
# continuation mode (vLLM's, probed, in words), a 401, a cut after the reasoning.
# name -> (the faulty route's model, what is asked, the backup upstream's name suffix).
MORE: dict[str, tuple[str, str, str]] = {
    "drop5-vllm": (FAULT_MODES["drop"], "text", "vllm"),
    "drop5-auto": (FAULT_MODES["drop"], "text", "auto"),
    "drop5-wordy": (FAULT_MODES["drop"], "text", "wordy"),
    "http401": ("http:status=401", "text", "backup"),
    "reasoning-then-content-cut": ("reasoning:cut_after=15", "reasoning", "backup"),
}
HEALTHY = {"text": "ok", "reasoning": "reasoning", "tool": "tool-call"}
# The backups: how each continues a cut answer (`auto`: as nobusy finds out by probing).
_BACKUPS = {
    "backup": "continuation: prefix",
    "vllm": "continuation: vllm",
    "auto": "default_model: ok",
    "wordy": 'default_model: "ok:continuation=none"',
}
LITELLM_CAP = 20.0  # seconds: a LiteLLM request to a keep-alive-only upstream never ends
IDLE_TIMEOUT = 1.0  # nobusy's idle_timeout: a stream silent this long is continued elsewhere


def _all() -> dict[str, tuple[str, str, str]]:
    return {k: (m, w, "backup") for k, (m, w) in SCENARIOS.items()} | MORE


def alias(kind: str, scenario: str, protocol: str, stream: bool) -> str:
    return f"{kind}-{scenario}-{protocol}-{'s' if stream else 'n'}"


def healthy_alias(kind: str, what: str) -> str:
    return f"{kind}-healthy-{what}"


def _base(kind: str, port: int) -> str:
    return f"http://{procs.HOST}:{port}" + ("/v1" if kind == "openai" else "")


def nobusy_yaml(fakes: dict[str, int], dead: int) -> str:
    """For each kind served: a backup upstream per answer shape and an upstream and alias per
    (scenario, protocol, mode), the faulty route first."""
    lines = ["upstreams:"]
    models = ["models:"]
    for kind, port in fakes.items():
        url = _base(kind, port)
        for backup, extra in _BACKUPS.items():
            lines.append(f'  {kind}-{backup}: {{kind: {kind}, base_url: "{url}", {extra}}}')
        for what, model in HEALTHY.items():
            models.append(f'  {healthy_alias(kind, what)}: ["{kind}-backup/{model}"]')
        for scenario, (model, what, backup) in _all().items():
            base = _base(kind, dead) if scenario == "refused" else url
            for protocol in PROTOCOLS:
                for stream in (False, True):
                    name = alias(kind, scenario, protocol, stream)
                    lines.append(
                        f'  {name}: {{kind: {kind}, base_url: "{base}", default_model: "{model}", '
                        f"first_token_timeout: {FIRST_TOKEN_TIMEOUT:g}, "
                        f"idle_timeout: {IDLE_TIMEOUT:g}, continuation: prefix}}"
                    )
                    second = f"{kind}-{backup}" + ("" if backup in ("auto", "wordy") else
                                                   f"/{HEALTHY[what]}")  # fmt: skip
                    models.append(f'  {name}: [{name}, "{second}"]')
    return "\n".join(lines + models) + "\n"


def litellm_yaml(port: int, dead: int) -> str:
    """The same routes for LiteLLM, openai-format upstream only: a deployment per (scenario,
    protocol, mode) falling back to a healthy one. Responses requests are bridged to chat
    completions (``use_chat_completions_api``): the fake serves no ``/v1/responses``."""
    lines, fallbacks = ["model_list:"], []

    def deployment(name: str, model: str, at: int, protocol: str, slow: bool) -> None:
        params = f'model: "openai/{model}", api_base: "http://{procs.HOST}:{at}/v1", api_key: x'
        if protocol == "responses":
            params += ", use_chat_completions_api: true"
        if slow:  # LiteLLM's first-token budget, as in the failover suite
            params += f", timeout: {FIRST_TOKEN_TIMEOUT:g}, stream_timeout: {FIRST_TOKEN_TIMEOUT:g}"
        lines.extend([f"  - model_name: {name}", f"    litellm_params: {{{params}}}"])

    for protocol in PROTOCOLS:
        for what, model in HEALTHY.items():
            deployment(f"backup-{protocol}-{what}", model, port, protocol, False)
    for scenario, (model, what) in SCENARIOS.items():
        at = dead if scenario == "refused" else port
        for protocol in PROTOCOLS:
            for stream in (False, True):
                name = alias("openai", scenario, protocol, stream)
                deployment(name, model, at, protocol, scenario in ("hang", "keepalive"))
                fallbacks.append(f"{name}: [backup-{protocol}-{what}]")
    # Messages to an openai-format deployment: through LiteLLM's chat-completions adapter (by
    # default it sends them to `/v1/responses`); `thinking` dropped where LiteLLM rejects it.
    lines.append("litellm_settings:")
    lines.append("  use_chat_completions_url_for_anthropic_messages: true")
    lines.append("  drop_params: true")
    lines.append("router_settings:")
    lines.append("  num_retries: 0  # fall back at once, as in the failover suite")
    lines.append("  fallbacks:")
    lines += [f"    - {{{f}}}" for f in fallbacks]
    return "\n".join(lines) + "\n"


def _healthy(clients: Clients, kind: str, gateway: str) -> dict[tuple[str, str, bool], Answer]:
    out = {}
    for protocol in PROTOCOLS:
        for what in HEALTHY:
            for stream in (False, True):
                model = (
                    f"backup-{protocol}-{what}"
                    if gateway == "litellm"
                    else healthy_alias(kind, what)
                )
                out[(protocol, what, stream)] = ask(clients, protocol, model, stream, what)
    return out


def _cases(scenarios: Iterable[str] = SCENARIOS) -> list[tuple[str, str, bool]]:
    return [
        (scenario, protocol, stream)
        for scenario in scenarios
        for protocol in PROTOCOLS
        for stream in (False, True)
    ]


def _record(samples: Result, key: str, answer: Answer, healthy: Answer) -> None:
    """A verdict per repetition under ``samples[key]``; the first note under ``notes``."""
    samples.setdefault(key, []).append(answer.verdict(healthy))
    if answer.notes:
        samples.setdefault("notes", {}).setdefault(key, answer.notes[0])


def measure_nobusy(ctx: Context, port: int, kind: str, reps: int) -> Result:
    """Every case ``reps`` times, one at a time, the faulty upstream's circuit closed first."""
    clients = Clients(port, ctx.key, timeout=30.0)
    try:
        healthy = _healthy(clients, kind, "nobusy")
        broken = {k: a.verdict(a) for k, a in healthy.items() if a.error or a.flaws}
        samples: Result = {}
        for rep in range(reps):
            for scenario, protocol, stream in _cases(_all()):
                name = alias(kind, scenario, protocol, stream)
                procs.http_call(port, "POST", f"/v1/nobusy/upstreams/{name}/reset")
                what = _all()[scenario][1]
                answer = ask(clients, protocol, name, stream, what)
                _record(samples, name, answer, healthy[(protocol, what, stream)])
            passed = sum(v[-1] == "ok" for k, v in samples.items() if k != "notes")
            asked = len(_cases(_all()))
            ctx.log(f"[protocols] nobusy, {kind} upstream, round {rep + 1}/{reps}: "
                    f"{passed} of {asked} identical to the healthy answer")  # fmt: skip
    finally:
        clients.close()
    notes = samples.pop("notes", {})
    return {"samples": samples, "notes": notes,
            "healthy_broken": {str(k): v for k, v in broken.items()}}  # fmt: skip


def measure_litellm(ctx: Context, port: int, cap: float) -> Result:
    """Every case once, six at a time (keep-alive-only upstreams never end under LiteLLM: each
    request is capped at ``cap`` seconds)."""
    clients = Clients(port, ctx.key, timeout=cap)
    try:
        healthy = _healthy(clients, "openai", "litellm")
        broken = {str(k): a.verdict(a) for k, a in healthy.items() if a.error or a.flaws}
        samples: Result = {}

        def one(case: tuple[str, str, bool]) -> tuple[str, Answer]:
            scenario, protocol, stream = case
            name = alias("openai", scenario, protocol, stream)
            return name, ask(clients, protocol, name, stream, SCENARIOS[scenario][1])

        cases = _cases()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            for (scenario, protocol, stream), (name, answer) in zip(
                cases, pool.map(one, cases), strict=True
            ):
                what = SCENARIOS[scenario][1]
                _record(samples, name, answer, healthy[(protocol, what, stream)])
        notes = samples.pop("notes", {})
        passed = sum(v[-1] == "ok" for v in samples.values())
        ctx.log(f"[protocols] LiteLLM: {passed} of {len(samples)} identical to the healthy answer")
    finally:
        clients.close()
    return {"samples": samples, "notes": notes, "healthy_broken": broken}


def kinds_served(fake_port: int) -> dict[str, str | None]:
    """Each upstream kind, None when this build can put it behind nobusy, else why not: the
    ``anthropic`` kind needs the kind in ``nobusy.upstreams`` and ``/v1/messages`` at the fake."""
    out: dict[str, str | None] = {"openai": None}
    try:
        settings_class("anthropic")
    except (KeyError, ImportError, ValueError) as exc:
        out["anthropic"] = f"this build has no `kind: anthropic` upstream ({exc})"
        return out
    status, _ = procs.http_call(fake_port, "POST", "/v1/messages",
                                {"model": "ok", "max_tokens": 8,
                                 "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    out["anthropic"] = None if status == 200 else f"the fake answers /v1/messages with {status}"
    return out


def measure(ctx: Context, reps: int) -> Result:
    """Start the fake, nobusy (and LiteLLM), ask every case through each upstream kind served."""
    out: Result = {"scenarios": {k: list(v) for k, v in SCENARIOS.items()}, "reps": reps,
                   "more": {k: list(v) for k, v in MORE.items()},
                   "errors": {}}  # fmt: skip
    fake = ctx.procs.fake_upstream(12, name="protocols-fake")
    kinds = kinds_served(fake.port)
    out["kinds"] = kinds
    served = [k for k, why in kinds.items() if why is None]
    dead = procs.free_port()
    config = nobusy_yaml({k: fake.port for k in served}, dead)
    nobusy = ctx.procs.nobusy("nobusy-protocols", None, config=config)
    out["nobusy"] = {k: measure_nobusy(ctx, nobusy.port, k, reps) for k in served}
    ctx.procs.stop(nobusy)
    install = ctx.litellm()
    if not install.ok:
        out["errors"]["litellm"] = f"LiteLLM {procs.LITELLM_VERSION} not installed: {install.error}"
        return out
    try:
        litellm = ctx.procs.litellm(install, 0, ctx.key, config=litellm_yaml(fake.port, dead),
                                    name="litellm-protocols")  # fmt: skip
    except procs.StartError as exc:
        out["errors"]["litellm"] = f"LiteLLM proxy did not start: {exc}"
        return out
    out["litellm"] = measure_litellm(ctx, litellm.port, LITELLM_CAP)
    # LiteLLM waits on SIGTERM for requests to keep-alive-only upstreams: no point waiting.
    ctx.procs.stop(litellm, timeout=2.0)
    return out
