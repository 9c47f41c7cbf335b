"""The failover suite's figures, goals and page, from the raw samples of a run."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.loadgen import percentile
from bench.suites.base import (
    Goal,
    Result,
    at_least,
    at_most,
    fmt,
    md_table,
)

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
