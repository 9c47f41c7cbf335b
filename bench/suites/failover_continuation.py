"""Continuation quality: how often an answer cut mid-stream comes out as the uncut one.

For each continuation mode (``prefix``, ``vllm``, ``none`` = an instruction, and ``auto`` as
nobusy resolves it) and each upstream kind — the fake honouring every native mode, only
``vllm``, or none (it restarts on an ignored field and restates its last words when asked
in words), and the embedded model — a question is answered uncut (temperature 0), the answer
is cut after a few content chunks, and the continuation is asked for exactly as nobusy's
failover asks for it (``continuation_body``) and joined exactly as it joins it
(``continuation.Joiner``). Each assembled answer is counted as *identical* to the uncut one,
*with repeats* (a run of three or more words that occurs more often than in the uncut
answer), and *with the instruction echoed* (three words of the instruction in a row that the
uncut answer does not have).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from bench import procs
from bench.suites.base import Context, Goal, Result, Suite, at_least, fmt, md_table
from nobusy.routing.continuation import CONTINUE_INSTRUCTION, Joiner, Method, continuation_body
from nobusy.routing.continuation_probe import ContinuationModes
from nobusy.upstreams import build_upstream, settings_class
from nobusy.upstreams.base import Upstream, UpstreamCall, UpstreamSettings

QUESTIONS = [
    "What is a lighthouse for?",
    "Name three colours of the rainbow.",
    "Why is the sky blue?",
    "How do bees make honey?",
    "What does a gateway do?",
    "Describe a rainy afternoon.",
]
CUTS = (3, 7)  # content chunks received before the cut
MAX_TOKENS = 40
MODES = ("prefix", "vllm", "none", "auto")
FAKES = ("all", "vllm", "none")  # which native continuations the fake honours


def _ngrams(text: str, n: int = 3) -> Counter[tuple[str, ...]]:
    words = text.lower().split()
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def classify(uncut: str, assembled: str) -> dict[str, bool]:
    """Whether an assembled answer equals the uncut one, repeats itself, or echoes the ask."""
    seen, had = _ngrams(assembled), _ngrams(uncut)
    repeats = any(count > max(had.get(gram, 0), 1) for gram, count in seen.items())
    echoed = any(gram in seen and gram not in had for gram in _ngrams(CONTINUE_INSTRUCTION))
    return {"identical": assembled == uncut, "repeats": repeats, "echoed": echoed}


async def _pieces(upstream: Upstream, model: str | None, body: dict[str, Any]) -> list[str]:
    out: list[str] = []
    async for chunk in upstream.stream(UpstreamCall(model=model, body=body)):
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                out.append(text)
    return out


async def _case(
    upstream: Upstream, spec: UpstreamSettings, model: str | None, mode: str
) -> dict[str, Any]:
    method = (
        await ContinuationModes().method(upstream, spec, model) if mode == "auto" else Method(mode)
    )
    counts = Counter[str]()
    samples: list[str] = []
    for question in QUESTIONS:
        base = {
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "seed": 1,
            "max_tokens": MAX_TOKENS,
        }
        pieces = await _pieces(upstream, model, base)
        uncut = "".join(pieces)
        for cut in CUTS:
            if len(pieces) <= cut:
                continue
            content = "".join(pieces[:cut])
            joiner = Joiner(content, method.mode)
            body = continuation_body(base, joiner.partial, method.mode, cut)
            rest = "".join(joiner.feed(p) for p in await _pieces(upstream, model, body))
            assembled = content + rest + joiner.flush()
            counts["answers"] += 1
            counts.update(k for k, v in classify(uncut, assembled).items() if v)
            if not assembled == uncut and len(samples) < 2:
                samples.append(assembled)
    return {"mode": mode, "used": method.mode, "counts": dict(counts), "samples": samples}


def _openai(port: int, honoured: str) -> tuple[Upstream, UpstreamSettings, str]:
    spec = settings_class("openai").model_validate(
        {
            "base_url": f"http://{procs.HOST}:{port}/v1",
            "default_model": f"ok:continuation={honoured}",
        }
    )
    return build_upstream(f"fake-{honoured}", spec), spec, f"ok:continuation={honoured}"


async def _measure(port: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for honoured in FAKES:
        upstream, spec, model = _openai(port, honoured)
        try:
            for mode in MODES:
                rows.append(
                    {"upstream": f"fake ({honoured})"} | await _case(upstream, spec, model, mode)
                )
        finally:
            await upstream.aclose()
    spec = settings_class("embedded").model_validate({"kind": "embedded", "threads": 2})
    embedded = build_upstream("embedded", spec)
    try:
        for mode in ("prefix", "none", "auto"):
            rows.append({"upstream": "embedded"} | await _case(embedded, spec, None, mode))
    finally:
        await embedded.aclose()
    return rows


def run(ctx: Context) -> Result:
    fake = ctx.procs.fake_upstream(tokens=16, name="continuation-fake")
    try:
        rows = asyncio.run(_measure(fake.port))
    finally:
        ctx.procs.stop(fake)
    for row in rows:
        c = row["counts"]
        ctx.log(
            f"  {row['upstream']:>14} {row['mode']:>6} (uses {row['used']}): "
            f"{c.get('identical', 0)}/{c.get('answers', 0)} identical, "
            f"{c.get('repeats', 0)} with repeats, {c.get('echoed', 0)} echoed"
        )
    return {"questions": QUESTIONS, "cuts": list(CUTS), "max_tokens": MAX_TOKENS, "rows": rows}


def _share(counts: dict[str, int], key: str) -> float | None:
    return counts.get(key, 0) / counts["answers"] if counts.get("answers") else None


def render(result: Result, img: Path) -> str:
    body = []
    for row in result["rows"]:
        c = row["counts"]
        body.append(
            [
                row["upstream"],
                row["mode"] + (f" → {row['used']}" if row["mode"] == "auto" else ""),
                str(c.get("answers", 0)),
                fmt(100 * (_share(c, "identical") or 0), 0, "%"),
                fmt(100 * (_share(c, "repeats") or 0), 0, "%"),
                fmt(100 * (_share(c, "echoed") or 0), 0, "%"),
            ]
        )
    intro = (
        f"{len(result['questions'])} questions, each cut after {result['cuts']} content chunks "
        f"(`max_tokens` {result['max_tokens']}, temperature 0), continued as nobusy's failover "
        "does. *fake (all)* honours `prefix: true` and `continue_final_message`, *fake (vllm)* "
        "only the latter, *fake (none)* neither (it starts over, and asked in words it restates "
        "its last three words); *auto* is what nobusy picks after probing."
    )
    headers = ["upstream", "mode", "answers", "identical", "with repeats", "instruction echoed"]
    return "\n\n".join([intro, md_table(headers, body)])


def goals(result: Result) -> list[Goal]:
    auto = [r for r in result["rows"] if r["mode"] == "auto" and r["upstream"] != "embedded"]
    total = sum(r["counts"].get("answers", 0) for r in auto)
    same = sum(r["counts"].get("identical", 0) for r in auto)
    share = 100 * same / total if total else None
    return [
        at_least(
            "continuation (auto, fake upstreams)",
            share,
            100,
            "%",
            "answers identical to the uncut one",
        )
    ]


SUITE = Suite(
    name="continuation",
    title="Continuation quality after a mid-stream cut",
    run=run,
    render=render,
    goals=goals,
)
