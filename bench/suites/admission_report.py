"""The admission suite's constants; what each request got and the figures of a group of
requests; the goals and the page, from the figures of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.loadgen import Sent, percentile
from bench.suites.base import Goal, Result, at_least, at_most, fmt, md_table
from nobusy import errors
from nobusy.testing.fake_upstream import answer_text

PROMPT = "Hello"
SLOTS = 4  # the fake's --capacity: a 5th concurrent request gets 503 "Server busy"
TOKENS = 12  # content chunks per answer...
CHUNK_DELAY = 0.04  # ...40 ms apart: about 0.45 s an answer, so ~8.8 answers/s
PATIENCE = 30.0  # seconds: x-nobusy-max-wait, what a client waits for its answer to start
GRACE = 5.0  # the client hangs up PATIENCE + GRACE seconds after sending (the answer streams)
BURST_X = 3  # burst: arrivals at 3× the measured capacity
SUSTAINED_X = 5  # sustained: 5×
HIGH_EVERY = 10  # sustained: every 10th request from the priority-high key (10%)
NORMAL_LOAD = 0.7  # abuser scenario: the three normal keys together, as a share of capacity
ABUSE_X = 20  # the abuser sends 20× one normal key's rate

LABELS = {
    "nobusy": "nobusy, `max_concurrency: 4`",
    "nobusy-adaptive": "nobusy, no `max_concurrency` (adaptive)",
    "nobusy-adaptive-nocircuit": "nobusy, adaptive, circuit breaker relaxed",
    "nobusy-local": "nobusy, no `max_concurrency`, an upstream that queues (as vLLM)",
    "litellm": "LiteLLM, `num_retries: 2`",
}
COLOURS = {
    "nobusy": "#1f77b4",
    "nobusy-adaptive": "#ff7f0e",
    "nobusy-adaptive-nocircuit": "#2ca02c",
    "nobusy-local": "#9467bd",
    "litellm": "#d62728",
}


def plan(quick: bool) -> dict[str, Any]:
    return {
        "capacity_s": 2.0 if quick else 4.0,  # direct, closed loop, to measure capacity
        "burst_s": 4.0 if quick else 15.0,
        "sustained_s": 10.0 if quick else 60.0,
        "fair_s": 3.0 if quick else 6.0,  # each phase of the abuser scenario
        "fair_lead_s": 1.0,  # the abuser starts this long before the normal keys
        "flood_s": 4.0 if quick else 20.0,  # each phase of the flood cases
    }


MESSAGES = [{"role": "user", "content": PROMPT}]
EXPECTED = answer_text(MESSAGES, TOKENS)


def _codes() -> dict[str, int]:
    """nobusy's error codes and their HTTP statuses, for errors that arrive inside a stream."""
    found: dict[str, int] = {}
    todo: list[type[errors.NobusyError]] = [errors.NobusyError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        code = getattr(cls, "code", None)
        if isinstance(code, str):
            found.setdefault(code, int(getattr(cls, "status_code", 500)))
    return found


CODES = _codes()


# --- one request as its client saw it -----------------------------------------------------------


def classify(sent: Sent) -> Result:
    """Outcome of one request: ``answered`` (the whole right text), ``429``, ``5xx``,
    ``error-429``/``error-5xx`` (an error event inside a 200 stream, by its code), ``timeout``
    (the client gave up), ``cut`` (still running when the run ended), ``wrong``, ``other``."""
    rec: Result = {
        "t": round(sent.sent_at, 4),
        "status": sent.status,
        "ms": round(sent.elapsed * 1000, 3),
        "ttft_ms": None,
        "kind": "",
        "code": None,
        "retry_after": sent.headers.get("retry-after"),
        "queued": False,
        "deliveries": [],  # (seconds since the run began, characters of content): not saved
    }
    if sent.cut:
        rec["kind"] = "cut"
        return rec
    if sent.status == 200:
        text, error = _read_stream(sent, rec)
        if error is not None:
            rec["code"] = error
            rec["kind"] = "error-429" if _status_of(error) == 429 else "error-5xx"
        elif sent.error is not None:
            rec["kind"] = "timeout"
        else:
            rec["kind"] = "answered" if text == EXPECTED else "wrong"
        return rec
    if sent.status == 0:
        rec["kind"] = "timeout" if (sent.error or "").startswith("timed out") else "other"
        rec["code"] = sent.error
        return rec
    rec["code"] = _error_code(sent.body)
    if sent.status == 429:
        rec["kind"] = "429"
    elif sent.status >= 500:
        rec["kind"] = "5xx"
    else:
        rec["kind"] = "other"
    return rec


def _status_of(code: str) -> int:
    if code.isdigit():
        return int(code)
    return CODES.get(code, 500)


def _error_code(body: bytes) -> str | None:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(error, dict):
        return None
    return str(error.get("code") or error.get("type") or "")[:60] or None


def _read_stream(sent: Sent, rec: Result) -> tuple[str, str | None]:
    """The streamed text; sets the time to the first content token and whether it queued."""
    text: list[str] = []
    error: str | None = None
    buf = b""
    for at, piece in sent.pieces:
        buf += piece.replace(b"\r\n", b"\n")
        while b"\n\n" in buf:
            raw, buf = buf.split(b"\n\n", 1)
            if raw.startswith(b": nobusy: queued"):
                rec["queued"] = True
            lines = raw.split(b"\n")
            data = b"\n".join(x[5:].lstrip() for x in lines if x.startswith(b"data:"))
            if not data or data == b"[DONE]":
                continue
            try:
                payload = json.loads(data)
            except ValueError:
                error = error or "bad_json_event"
                continue
            if not isinstance(payload, dict):
                continue
            if "error" in payload:
                found = payload["error"]
                code = found.get("code") if isinstance(found, dict) else None
                error = error or str(code or "stream_error")
                continue
            for choice in payload.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if rec["ttft_ms"] is None:
                        rec["ttft_ms"] = round(at * 1000, 3)
                    text.append(content)
                    rec["deliveries"].append((sent.sent_at + at, len(content)))
    return "".join(text), error


# --- figures from a group of requests -------------------------------------------------------------


def pcts(values: list[float]) -> Result | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


def summarise(
    recs: list[Result], window: tuple[float, float], capacity: float, cut_fails: bool = False
) -> Result:
    """Outcomes, times and goodput of one group of requests. Goodput is the content of
    answers that came out right, streamed inside ``window``, in answers per second (so an
    answer half streamed at the window's edge counts half: no quantisation by whole answers),
    and as a share of ``capacity``. Requests ``cut`` by the end of the run are left out of
    the answered share unless ``cut_fails``."""
    kinds: dict[str, int] = {}
    failures: dict[str, int] = {}
    for r in recs:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        if r["kind"] != "answered":
            label = _label(r)
            failures[label] = failures.get(label, 0) + 1
    answered = [r for r in recs if r["kind"] == "answered"]
    rejected = [r for r in recs if r["kind"] == "429"]
    late = [r for r in recs if r["kind"] == "error-429"]
    start, end = window
    done = sum(1 for r in answered if start <= r["t"] + r["ms"] / 1000 <= end)
    chars = sum(n for r in answered for at, n in r["deliveries"] if start <= at <= end)
    per_s = chars / len(EXPECTED) / (end - start) if end > start else None
    sent = len(recs) if cut_fails else len(recs) - kinds.get("cut", 0)
    return {
        "sent": len(recs),
        "decided": sent,  # not cut off by the end of the run
        "kinds": kinds,
        "failures": failures,
        "answered": len(answered),
        "answered_share": len(answered) / sent if sent else None,
        "server_errors": kinds.get("5xx", 0) + kinds.get("error-5xx", 0),
        "http_5xx": kinds.get("5xx", 0),
        "latency_ms": pcts([r["ms"] for r in answered]),
        "ttft_ms": pcts([r["ttft_ms"] for r in answered if r["ttft_ms"] is not None]),
        "queued": sum(1 for r in answered if r["queued"]),
        "rejected_429": len(rejected),
        "rejected_429_ms": pcts([r["ms"] for r in rejected]),
        "rejected_retry_after": sum(1 for r in rejected if r["retry_after"] is not None),
        "late_rejections": len(late),
        "all_rejections_ms": pcts([r["ms"] for r in rejected + late]),
        "window_s": [start, end],
        "completed_per_s": done / (end - start) if end > start else None,
        "goodput_per_s": per_s,
        "goodput_share": per_s / capacity if per_s is not None and capacity else None,
    }


def _label(r: Result) -> str:
    """What a client that was not answered got, in words."""
    kind, status, code = r["kind"], r["status"], r["code"]
    if kind == "cut":
        begun = " (200, stream begun)" if status == 200 else ""
        return f"still waiting when the run ended{begun}"
    if kind in ("error-429", "error-5xx"):
        return f"200, then an error event `{code}`"
    if kind in ("429", "5xx", "other") and status:
        return f"HTTP {status} `{code}`" if code else f"HTTP {status}"
    if kind == "timeout":
        return "gave up after its patience"
    if kind == "wrong":
        return "200 with a wrong text"
    return f"{kind}: {code}" if code else kind


def per_second(recs: list[Result], until: float) -> dict[str, list[int]]:
    """Answers completed, and requests refused or failed (at their end), in each second."""
    bins = int(until) + 1
    out = {"answered": [0] * bins, "refused": [0] * bins, "failed": [0] * bins}
    for r in recs:
        second = int(r["t"] + r["ms"] / 1000)
        if not 0 <= second < bins or r["kind"] == "cut":
            continue
        kind = r["kind"]
        key = "answered" if kind == "answered" else "refused" if "429" in kind else "failed"
        out[key][second] += 1
    return out


# --- figures --------------------------------------------------------------------------------------


def _get(row: Result | None, *keys: str) -> Any:
    value: Any = row
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100


def high_wait_ms(result: Result) -> float | None:
    """p99 queue wait of the priority-high key: its time to first token minus the direct one."""
    ttft = _get(result, "sustained", "high", "ttft_ms", "p99")
    if ttft is None:
        return None
    return max(0.0, float(ttft) - float(result["capacity"]["direct_ttft_ms"]))


def fair_ratio(result: Result, gateway: str, *keys: str) -> float | None:
    """A figure of the normal keys beside the abuser over the same figure alone."""
    alone = _get(result, "fair", gateway, "alone", "normal", *keys)
    abused = _get(result, "fair", gateway, "abused", "normal", *keys)
    if alone is None or abused is None or not alone:
        return None
    return float(abused) / float(alone)


def goals(result: Result) -> list[Goal]:
    if "crashed" in result:
        return []
    burst = result["burst"].get("nobusy")
    adaptive = result["burst"].get("nobusy-adaptive")
    sustained = result["sustained"]
    service = result["capacity"]["service_ms"]
    ratio_good = fair_ratio(result, "nobusy", "goodput_per_s")
    ratio_p99 = fair_ratio(result, "nobusy", "latency_ms", "p99")
    out = [
        at_least("Burst 3×: answered", _pct(_get(burst, "answered_share")), 95, "%"),
        at_most("Burst 3×: client 5xx", _get(burst, "server_errors"), 0, "errors"),
        at_most(
            "Burst 3×: upstream calls rejected",
            _pct(_get(burst, "upstream_rejected_share")),
            5,
            "%",
        ),
        at_least("Burst 3×: goodput of capacity", _pct(_get(burst, "goodput_share")), 95, "%"),
        at_least(
            "Burst 3×, no max_concurrency: answered",
            _pct(_get(adaptive, "answered_share")),
            95,
            "%",
        ),
        at_most(
            "Burst 3×, no max_concurrency: client 5xx",
            _get(adaptive, "server_errors"),
            0,
            "errors",
        ),
        at_least(
            "Burst 3×, an upstream that queues: answered",
            _pct(_get(result["burst"].get("nobusy-local"), "answered_share")),
            95,
            "%",
        ),
        at_most(
            "Burst 3×, no max_concurrency: upstream calls rejected",
            _pct(_get(adaptive, "upstream_rejected_share")),
            5,
            "%",
        ),
        at_least(
            "Burst 3×, no max_concurrency: goodput of capacity",
            _pct(_get(adaptive, "goodput_share")),
            95,
            "%",
        ),
        at_most(
            "Sustained 5×: rejection latency p99 (every 429, at once or after waiting)",
            _get(sustained, "all", "all_rejections_ms", "p99"),
            50,
            "ms",
        ),
    ]
    rejected = _get(sustained, "all", "rejected_429")
    with_header = _get(sustained, "all", "rejected_retry_after")
    out.append(
        at_least(
            "Sustained 5×: 429s with Retry-After",
            None if not rejected else with_header / rejected * 100,
            100,
            "%",
            "no 429 was sent",
        )
    )
    out.append(
        at_least(
            "Sustained 5×: goodput of capacity",
            _pct(_get(sustained, "all", "goodput_share")),
            95,
            "%",
        )
    )
    out.append(
        at_most(
            "Sustained 5×: high-priority p99 queue wait",
            high_wait_ms(result),
            round(2 * service),
            "ms",
            "no high-priority answer",
        )
    )
    out.append(
        at_least(
            "Abuser at 20×: normal keys' goodput vs alone",
            _pct(ratio_good),
            90,
            "%",
        )
    )
    out.append(
        at_most(
            "Abuser at 20×: normal keys' p99 latency vs alone",
            _pct(ratio_p99),
            110,
            "%",
        )
    )
    return out


# --- the page -----------------------------------------------------------------------------------


def _ms(stats: Result | None, key: str) -> str:
    return fmt(None if not stats else stats.get(key), 1)


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _failures(row: Result) -> str:
    items = sorted(row.get("failures", {}).items(), key=lambda kv: -kv[1])
    return "; ".join(f"{n}× {k}" for k, n in items) or "none"


def _burst_table(result: Result) -> str:
    rows = []
    for name, row in result["burst"].items():
        upstream = row["upstream"]
        rows.append(
            [
                LABELS.get(name, name),
                f"{row['sent']:,}",
                f"{row['answered']:,} ({_share(row['answered_share'])})",
                f"{row['http_5xx']} + {row['server_errors'] - row['http_5xx']}",
                f"{row['rejected_429'] + row['late_rejections']}",
                f"{row['kinds'].get('timeout', 0)}",
                fmt(row["calls_per_request"], 2),
                f"{upstream.get('rejected', 0):,} / {upstream.get('requests', 0):,} "
                f"({_share(row['upstream_rejected_share'])})",
                f"{fmt(row['goodput_per_s'], 2)} ({_share(row['goodput_share'])})",
                f"{_ms(row['ttft_ms'], 'p50')} / {_ms(row['ttft_ms'], 'p99')}",
                fmt(row["gateway_cpu_s"], 1),
            ]
        )
    headers = [
        "gateway",
        "sent",
        "answered",
        "5xx (HTTP + in stream)",
        "429",
        "client gave up",
        "upstream calls / request",
        "upstream rejected",
        "goodput answers/s (of capacity)",
        "TTFT p50 / p99 ms",
        "gateway CPU s",
    ]
    return md_table(headers, rows)


def _views(result: Result) -> str:
    lines = []
    for name, row in result["burst"].items():
        view = row.get("nobusy_view")
        if not view:
            continue
        line = (
            f"- {LABELS.get(name, name)}: working limit {view['limit']} (ceiling "
            f"{fmt(view['ceiling'], 0)}), {view['drops']} overload drops"
        )
        if view.get("slowdowns"):
            line += f", {view['slowdowns']} decreases for a longer time to first token"
        line += f", circuit `{view['state']}` after {view['ejections']} ejection(s)."
        queue = row.get("upstream_queue")
        if queue:
            line += (
                f" Requests waiting inside the upstream while the arrivals lasted: median "
                f"{queue['p50']}, at most {queue['max']} (the rest waited in nobusy's queue)."
            )
        lines.append(line)
    return "\n".join(lines)


def _sustained_table(result: Result) -> str:
    s = result["sustained"]
    rows = []
    for name in ("high", "normal", "all"):
        row = s[name]
        ttft = row["ttft_ms"]
        rej = row["rejected_429_ms"]
        rows.append(
            [
                name,
                f"{row['sent']:,}",
                f"{row['answered']:,}",
                f"{row['rejected_429']:,}",
                f"{_ms(rej, 'p50')} / {_ms(rej, 'p99')}",
                f"{row['rejected_retry_after']:,}",
                f"{row['late_rejections']:,}",
                f"{row['server_errors']:,}",
                f"{row['kinds'].get('cut', 0):,}",
                f"{_ms(ttft, 'p50')} / {_ms(ttft, 'p99')}",
                f"{fmt(row['goodput_per_s'], 2)} ({_share(row['goodput_share'])})",
            ]
        )
    headers = [
        "key",
        "sent",
        "answered",
        "429 at once",
        "429 latency p50 / p99 ms",
        "with Retry-After",
        "429 after waiting",
        "5xx",
        "still queued at the end",
        "TTFT p50 / p99 ms",
        "goodput answers/s (of capacity)",
    ]
    return md_table(headers, rows)


def _added(result: Result, gateway: str) -> str:
    """The normal keys' p99 time to first token beside the abuser minus alone."""
    alone = _get(result, "fair", gateway, "alone", "normal", "ttft_ms", "p99")
    abused = _get(result, "fair", gateway, "abused", "normal", "ttft_ms", "p99")
    if alone is None or abused is None:
        return "—"
    return f"p99 {float(abused) - float(alone):+,.0f} ms"


def _fair_table(result: Result) -> str:
    rows = []
    for gateway, phases in result["fair"].items():
        for phase in ("alone", "abused"):
            n = phases[phase]["normal"]
            a = phases[phase].get("abuser")
            lat, ttft = n["latency_ms"], n["ttft_ms"]
            rows.append(
                [
                    LABELS.get(gateway, gateway),
                    "with the abuser" if phase == "abused" else "alone",
                    f"{n['answered']}/{n['decided']}",
                    fmt(n["goodput_per_s"], 2),
                    f"{_ms(lat, 'p50')} / {_ms(lat, 'p99')}",
                    f"{_ms(ttft, 'p50')} / {_ms(ttft, 'p99')}",
                    _failures(n),
                    "—" if a is None else f"{a['answered']}/{a['sent']}",
                    "—" if a is None else _failures(a),
                ]
            )
        rows.append(
            [
                LABELS.get(gateway, gateway),
                "**with ÷ alone**",
                "",
                _share(fair_ratio(result, gateway, "goodput_per_s")),
                f"p99 {_share(fair_ratio(result, gateway, 'latency_ms', 'p99'))}",
                _added(result, gateway),
                "",
                "",
                "",
            ]
        )
    headers = [
        "gateway",
        "phase",
        "normal keys answered",
        "their goodput /s",
        "their latency p50 / p99 ms",
        "their TTFT p50 / p99 ms",
        "their failures",
        "abuser answered",
        "abuser's other outcomes",
    ]
    return md_table(headers, rows, "llrrrrlrl")


def _plot(result: Result, out: Path) -> bool:
    try:
        import matplotlib.pyplot as plt

        import bench.plots  # noqa: F401  (selects the Agg backend)
    except ImportError:
        return False
    burst = result["burst"]
    capacity = result["capacity"]["answers_per_s"]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for name, row in burst.items():
        colour = COLOURS.get(name)
        label = LABELS.get(name, name).replace("`", "")
        answered = row["per_second"]["answered"]
        axes[0].plot(range(len(answered)), answered, "-", color=colour, label=label)
        samples = row.get("samples") or []
        ts = [s[0] for s in samples]
        rejected = [s[3] for s in samples]
        rate = [
            (rejected[i] - rejected[i - 1]) / max(ts[i] - ts[i - 1], 1e-3) if i else 0.0
            for i in range(len(ts))
        ]
        axes[1].plot(ts, rate, "-", color=colour, label=label)
        limits = [(s[0], s[1]) for s in row.get("nobusy_samples") or [] if s[1] is not None]
        if limits:
            axes[2].step([t for t, _ in limits], [v for _, v in limits], where="post", color=colour)
            axes[2].plot(ts, [s[1] for s in samples], ":", color=colour, alpha=0.6)
    axes[0].axhline(capacity, color="#7f7f7f", linestyle="--", label="capacity")
    axes[0].set_ylabel("answers completed / s")
    axes[0].legend(fontsize=7)
    axes[1].set_ylabel("upstream 503s / s")
    axes[2].axhline(SLOTS, color="#7f7f7f", linestyle="--")
    axes[2].set_ylabel("nobusy limit (solid)\nupstream in flight (dotted)")
    axes[2].set_xlabel(
        f"seconds since the burst began ({result['plan']['burst_s']:g} s of arrivals)"
    )
    for ax in axes:
        ax.axvline(result["plan"]["burst_s"], color="#7f7f7f", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Burst at 3× capacity: answers, upstream rejections, concurrency")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def render(result: Result, img: Path) -> str:
    if "crashed" in result:
        return f"The suite crashed:\n\n```\n{result['crashed']}\n```\n"
    cap = result["capacity"]
    p = result["plan"]
    parts = [
        (
            f"Every gateway has its own fake upstream with {SLOTS} slots: a 5th concurrent "
            f'request is answered 503 "Server busy" (no `Retry-After`). An answer is {TOKENS} '
            f"tokens {CHUNK_DELAY * 1000:.0f} ms apart. Measured directly with {SLOTS} "
            f"closed-loop connections: **{cap['answers_per_s']:.2f} answers/s** "
            f"({cap['service_ms']:.0f} ms an answer). Clients are open-loop: each request is "
            "sent on its own connection at a fixed rate, whatever happened to the earlier ones, "
            f"and streams; nobusy's clients send `x-nobusy-max-wait: {PATIENCE:g}` and every "
            f"client hangs up {PATIENCE + GRACE:g} s after sending (its patience for the answer "
            f"to start, plus {GRACE:g} s for the answer). *Answered* means the whole streamed "
            "text equals the fake's answer. *Goodput* is the text of answered requests that "
            "reached their clients while the overload lasted (from 1 s to the end of the "
            "arrivals), in answers per second and as a share of the measured capacity; it is "
            "counted by the character, so an answer half streamed at the window's edge counts "
            "half."
        ),
        f"### Burst: {BURST_X}× capacity for {p['burst_s']:g} s",
        (
            f"{result['burst'].get('nobusy', {}).get('sent', 0):,} requests per gateway at "
            f"{_get(result, 'burst', 'nobusy', 'rate_per_s') or 0:.1f}/s. The nobusy "
            "configurations ran in the same seconds, each against its own fake (the last one's "
            "fake queues beyond its 4 slots instead of answering 503, as a local vLLM or "
            "llama.cpp server does, so only the time to first token shows it is full); LiteLLM ran "
            "alone afterwards (its CPU use would disturb the others). *5xx* counts HTTP 5xx "
            "plus errors sent inside a 200 stream with a server-error code (nobusy answers a "
            "queued streaming request with 200 at once and reports a later failure as an SSE "
            "error event). *upstream rejected*: the fake's 503s over the calls it received."
        ),
        _burst_table(result),
    ]
    outcomes = [f"- {LABELS.get(n, n)}: {_failures(r)}" for n, r in result["burst"].items()]
    parts.append("What the clients that were not answered got:\n\n" + "\n".join(outcomes))
    views = _views(result)
    if views:
        parts.append("nobusy's view of its upstream once the burst was over:\n\n" + views)
    if _plot(result, img / "admission-burst.png"):
        parts.append("![Burst at 3× capacity](img/admission-burst.png)")
    if "litellm" in result.get("errors", {}):
        parts.append(f"LiteLLM was not measured: {result['errors']['litellm']}")
    s = result["sustained"]
    parts += [
        f"### Sustained: {SUSTAINED_X}× capacity for {p['sustained_s']:g} s, 10% high priority",
        (
            f"nobusy (`max_concurrency: 4`) with two keys: `priority: high` sends every "
            f"{HIGH_EVERY}th request, a normal key the rest, {s['rate_per_s']:.1f} requests/s "
            "in all. Requests still queued when the arrivals end (+2 s) are cut off by their "
            "clients and counted apart. A request nobusy admitted to the queue but could not "
            "serve within its patience gets 200 at once (the stream has begun) and, at the "
            "end of its patience, an error event `queue_timeout`: *429 after waiting*. The "
            "rejection-latency goal counts both kinds of 429. TTFT of an answered request is "
            "its time in the queue plus the fake's own first token "
            f"({cap['direct_ttft_ms']:.1f} ms directly); "
            f"the high-priority p99 queue wait is {fmt(high_wait_ms(result), 1)} ms against "
            f"2× the service time, {2 * cap['service_ms']:.0f} ms. A rejection's latency is "
            "measured by the client from its connect to the 429's last byte; the client's own "
            "event loop woke up to "
            f"{_ms(s.get('client_loop_lag_ms'), 'p99')} ms late (p99; max "
            f"{_ms(s.get('client_loop_lag_ms'), 'max')} ms), which is part of every figure. "
            f"nobusy used {fmt(s.get('nobusy_cpu_s'), 1)} CPU seconds in the run."
        ),
        _sustained_table(result),
    ]
    if result["fair"]:
        parts += [
            f"### One key at {ABUSE_X}× its fair share",
            (
                f"Three normal keys send together {NORMAL_LOAD:.0%} of capacity "
                f"({_get(result, 'fair', 'nobusy', 'normal_rate_per_s') or 0:.2f}/s each) for "
                f"{p['fair_s']:g} s, first alone, then with a fourth key sending "
                f"{ABUSE_X}× one normal key's rate (starting {p['fair_lead_s']:g} s earlier "
                "and hanging up when the phase ends). The normal keys' requests get 3 s after "
                "the phase to finish; what is not answered by then counts as not answered. "
                "Goodput is their answers per second while they send (plus 1 s); latency is "
                "the whole streamed answer, TTFT its start (the queue wait, through nobusy). "
                "LiteLLM's proxy without a database has only its master key and no per-key "
                "queue or fairness: there the four keys are four groups of clients sending the "
                "same master key."
            ),
            _fair_table(result),
        ]
    configs = "\n\n".join(
        f"{LABELS.get(n, n)}:\n\n```yaml\n{c}```" for n, c in result.get("configs", {}).items()
    )
    parts.append("Configurations (ports vary per run):\n\n" + configs)
    return "\n\n".join(parts) + "\n"
