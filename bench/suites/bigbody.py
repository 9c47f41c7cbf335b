"""Large bodies: is nobusy still responsive while it parses, guards and masks 9.5 MB requests?

nobusy in front of the fake upstream, with an input lexicon of 10,000 generated words and PII
masking on the alias. Six clients each send one ~9.5 MB chat request (Chinese text with phone
numbers in it) at the same moment, while one client asks ``/healthz`` in a loop; the figure
is that probe's p99 (target < 50 ms), beside the same probe with nothing else to do.
``python -m bench --only bigbody`` runs it alone.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import procs
from bench.suites.base import Context, Goal, Result, Suite, at_most, fmt, md_table
from bench.suites.guard import COMMON, SEED, _lexicon

__all__ = ["SUITE", "run"]

P99_TARGET_MS = 50.0
SENDERS = 6
BODY_BYTES = 9_500_000
MESSAGES = 40
IDLE_PROBES = 300
PROBE_GAP = 0.002  # seconds between probes: a steady health checker, not a flood


def _body(rng: random.Random) -> bytes:
    """A chat request of about BODY_BYTES: sentences of common characters, some phone numbers."""
    per_message = BODY_BYTES // MESSAGES
    messages: list[dict[str, str]] = []
    for i in range(MESSAGES):
        parts: list[str] = []
        size = 0
        while size < per_message:
            sentence = "".join(rng.choices(COMMON, k=rng.randint(8, 30)))
            if rng.random() < 0.05:
                sentence += f"电话1{rng.randint(3, 9)}{rng.randint(0, 999_999_999):09d}"
            sentence += "。"
            parts.append(sentence)
            size += len(sentence.encode())
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": "".join(parts)})
    return orjson.dumps({"model": "big", "max_tokens": 20, "messages": messages})


def _config(upstream_port: int, lexicon: Path) -> str:
    return (
        "guard:\n"
        f'  lexicons: [{{path: "{lexicon}", action: mask, scope: input}}]\n'
        "upstreams:\n"
        f'  fake: {{kind: openai, base_url: "http://{procs.HOST}:{upstream_port}/v1", '
        "default_model: ok}\n"
        "models:\n"
        "  big: {routes: [fake/ok], pii: {enabled: true}}\n"
    )


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _probe(client: httpx.Client, stop: threading.Event | None, count: int) -> list[float]:
    """Milliseconds per ``/healthz``, until ``stop`` is set (or ``count`` probes)."""
    times: list[float] = []
    while (stop is None and len(times) < count) or (stop is not None and not stop.is_set()):
        started = time.perf_counter()
        response = client.get("/healthz")
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
        time.sleep(PROBE_GAP)
    return times


def _round(url: str, body: bytes) -> Result:
    outcomes: list[tuple[int, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(SENDERS + 1)

    def send() -> None:
        with httpx.Client(timeout=120) as sender:
            start.wait()
            began = time.perf_counter()
            response = sender.post(
                url + "/v1/chat/completions",
                content=body,
                headers={"content-type": "application/json"},
            )
            with lock:
                outcomes.append((response.status_code, time.perf_counter() - began))
                if response.status_code != 200:
                    errors.append(response.text[:300])

    with httpx.Client(base_url=url, timeout=30) as client:
        idle = _probe(client, None, IDLE_PROBES)
        threads = [threading.Thread(target=send) for _ in range(SENDERS)]
        for thread in threads:
            thread.start()
        stop = threading.Event()
        start.wait()
        watcher = threading.Thread(target=lambda: ([t.join() for t in threads], stop.set()))
        watcher.start()
        busy = _probe(client, stop, 0)
        watcher.join()
    return {
        "idle_p50_ms": statistics.median(idle),
        "idle_p99_ms": _p(idle, 0.99),
        "busy_probes": len(busy),
        "busy_p50_ms": statistics.median(busy),
        "busy_p99_ms": _p(busy, 0.99),
        "busy_max_ms": max(busy),
        "statuses": sorted(status for status, _ in outcomes),
        "request_s": sorted(seconds for _, seconds in outcomes),
        "errors": errors,
    }


def run(ctx: Context) -> Result:
    rng = random.Random(SEED)
    lexicon = ctx.procs.run_dir / "bigbody-words.txt"
    lexicon.write_text("\n".join(_lexicon(rng)) + "\n")
    body = _body(rng)
    ctx.log(f"[bigbody] {SENDERS} bodies of {len(body) / 1e6:.2f} MB each")
    fake = ctx.procs.fake_upstream(ctx.settings.tokens, "bigbody-fake")
    server = ctx.procs.nobusy("bigbody-nobusy", None, config=_config(fake.port, lexicon))
    url = f"http://{procs.HOST}:{server.port}"
    rounds = []
    for i in range(1 if ctx.settings.quick else 3):
        row = _round(url, body)
        ctx.log(
            f"[bigbody] round {i + 1}: /healthz p99 {row['busy_p99_ms']:.1f} ms "
            f"(max {row['busy_max_ms']:.1f}, idle p99 {row['idle_p99_ms']:.1f}); "
            f"statuses {row['statuses']}; slowest body {row['request_s'][-1]:.2f} s"
        )
        rounds.append(row)
    worst = max(rounds, key=lambda r: r["busy_p99_ms"])
    return {
        "body_mb": len(body) / 1e6,
        "senders": SENDERS,
        "rounds": rounds,
        "busy_p99_ms": worst["busy_p99_ms"],
        "idle_p99_ms": max(r["idle_p99_ms"] for r in rounds),
    }


def goals(result: Result) -> list[Goal]:
    return [
        at_most(
            f"/healthz p99 while {result['senders']} bodies of "
            f"{result['body_mb']:.1f} MB are guarded and masked",
            result["busy_p99_ms"],
            P99_TARGET_MS,
            "ms",
        )
    ]


def render(result: Result, img: Path) -> str:
    intro = (
        f"{result['senders']} clients each send one {result['body_mb']:.1f} MB chat request at "
        "the same moment, to an alias with an input lexicon of 10,000 words and PII masking, "
        "while one client asks `/healthz` every 2 ms. Parsing, guarding and masking a body "
        "that large runs on a worker thread (`nobusy.offload`), not on the event loop. "
        "The worst round's p99 counts."
    )
    rows: list[list[str]] = []
    for i, r in enumerate(result["rounds"], 1):
        statuses: dict[Any, int] = {}
        for status in r["statuses"]:
            statuses[status] = statuses.get(status, 0) + 1
        rows.append(
            [
                str(i),
                fmt(r["idle_p99_ms"], 1, " ms"),
                fmt(r["busy_p50_ms"], 1, " ms"),
                fmt(r["busy_p99_ms"], 1, " ms"),
                fmt(r["busy_max_ms"], 1, " ms"),
                fmt(r["request_s"][-1], 2, " s"),
                ", ".join(f"{n}× {s}" for s, n in statuses.items()),
            ]
        )
    table = md_table(
        ["round", "idle p99", "busy p50", "busy p99", "busy max", "slowest body", "answers"],
        rows,
    )
    return f"{intro}\n\n{table}"


SUITE = Suite(
    name="bigbody",
    title="Large bodies: the event loop stays responsive",
    run=run,
    render=render,
    goals=goals,
)
