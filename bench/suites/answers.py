"""Cited answers: do the ``[n]`` of an answer point at passages that were retrieved?

The shipped eval documents (``bench/data/knowledge``) are uploaded into one vector store through
the Files and Vector Stores API of a running nobusy; then answerable eval questions are asked
with ``x-nobusy-knowledge`` naming the store (6 passages each), of two upstreams:

- the fake upstream, which repeats the question: each question is sent with ``[1] [3]`` (two
  valid indices) and every fifth with ``[9]`` too (past the 6 passages), so the count is known
  and nobusy's accounting (``cited``, ``invalid``) can be checked exactly;
- the embedded model (SmolLM2-135M-Instruct), which writes its own ``[n]``: what a small local
  model does with numbered sources, and whether nobusy reports every index it wrote.

A citation "points to a retrieved passage" when its number is one of the request's passages;
nobusy lists those in ``cited`` and every other number in ``invalid``; an answer "on target"
cites a passage from the question's own document.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import openai

from bench import procs
from bench.suites.base import Context, Goal, Result, Suite, at_least, fmt, md_table

__all__ = ["SUITE"]

DATA = Path(__file__).resolve().parents[1] / "data" / "knowledge"
CITE = re.compile(r"\[(\d{1,3})\]")
FAKE_QUESTIONS, EMBEDDED_QUESTIONS = 60, 8
QUICK_FAKE, QUICK_EMBEDDED = 12, 2

CONFIG = """
upstreams:
  fake: {{kind: openai, base_url: "http://{host}:{port}/v1", default_model: ok}}
  local: {{kind: embedded, max_concurrency: 1, n_ctx: 2048, first_token_timeout: 120}}
models:
  kb-fake: [fake/ok]
  kb-local: [local]
"""


def _questions(limit: int) -> list[dict[str, Any]]:
    """Answerable questions, dev and held-out alike, alternating zh and en documents."""
    rows = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines()]
    answerable = [q for q in rows if q.get("doc")]
    zh = [q for q in answerable if q["doc"].startswith("zh")]
    en = [q for q in answerable if not q["doc"].startswith("zh")]
    mixed = [q for pair in zip(zh, en, strict=False) for q in pair]
    return mixed[:limit]


def _fill(sdk: openai.OpenAI, log: Any) -> tuple[str, float]:
    """A store with every eval document, ingested: (its id, seconds it took)."""
    started = time.monotonic()
    store = sdk.vector_stores.create(name="eval")
    ids = []
    for path in sorted((DATA / "docs").iterdir()):
        ids.append(sdk.files.create(file=(path.name, path.read_bytes()), purpose="assistants").id)
    batch = sdk.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=ids, poll_interval_ms=500
    )
    counts = batch.file_counts
    log(f"answers: {counts.completed} of {counts.total} documents indexed ({counts.failed} failed)")
    return store.id, time.monotonic() - started


def _ask(
    sdk: openai.OpenAI, model: str, store: str, question: dict[str, Any], suffix: str
) -> dict[str, Any]:
    answer = sdk.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question["question"] + suffix}],
        max_tokens=160,
        temperature=0,
        extra_headers={"x-nobusy-knowledge": store},
    )
    text = answer.choices[0].message.content or ""
    nobusy: dict[str, Any] = (answer.model_extra or {}).get("nobusy", {})
    passages = {c["index"]: c for c in nobusy.get("citations", [])}
    written = [int(n) for n in CITE.findall(text)]
    valid = sorted({n for n in written if n in passages})
    return {
        "id": question["id"],
        "written": written,
        "valid": valid,
        "invalid": sorted({n for n in written if n not in passages}),
        "reported_cited": nobusy.get("cited", []),
        "reported_invalid": nobusy.get("invalid", []),
        "uncited": nobusy.get("uncited"),
        "passages": len(passages),
        "retrieved_doc": any(c["filename"] == f"{question['doc']}.md" for c in passages.values()),
        "on_target": any(passages[n]["filename"] == f"{question['doc']}.md" for n in valid),
    }


def _summary(rows: list[dict[str, Any]], seconds: float) -> Result:
    written = sum(len(r["written"]) for r in rows)
    pointing = sum(1 for r in rows for n in r["written"] if n in r["valid"])
    exact = sum(
        1
        for r in rows
        if r["reported_cited"] == r["valid"] and r["reported_invalid"] == r["invalid"]
    )
    citing = [r for r in rows if r["valid"]]
    return {
        "answers": len(rows),
        "seconds": seconds,
        "citations_written": written,
        "pointing": pointing,
        "pointing_share": pointing / written if written else None,
        "reported_exactly": exact,
        "reported_share": exact / len(rows) if rows else None,
        "answers_citing": len(citing),
        "marked_uncited": sum(1 for r in rows if r["uncited"] and not r["valid"]),
        "uncited": sum(1 for r in rows if not r["valid"]),
        "retrieved_doc": sum(1 for r in rows if r["retrieved_doc"]),
        "on_target": sum(1 for r in citing if r["on_target"]),
        "rows": rows,
    }


def run(ctx: Context) -> Result:
    quick = ctx.settings.quick
    fake = ctx.procs.fake_upstream(ctx.settings.tokens, name="fake-answers")
    config = CONFIG.format(host=procs.HOST, port=fake.port)
    nobusy = ctx.procs.nobusy("nobusy-answers", None, config=config, timeout=180)
    result: Result = {}
    try:
        sdk = openai.OpenAI(
            base_url=f"http://{procs.HOST}:{nobusy.port}/v1", api_key="-", timeout=300
        )
        store, result["ingest_s"] = _fill(sdk, ctx.log)
        rows = []
        started = time.monotonic()
        for n, question in enumerate(_questions(QUICK_FAKE if quick else FAKE_QUESTIONS)):
            suffix = " [1] [3]" + (" [9]" if n % 5 == 0 else "")
            rows.append(_ask(sdk, "kb-fake", store, question, suffix))
        result["fake"] = _summary(rows, time.monotonic() - started)
        ctx.log(f"answers: fake upstream, {len(rows)} answers")
        rows, started = [], time.monotonic()
        for question in _questions(QUICK_EMBEDDED if quick else EMBEDDED_QUESTIONS):
            rows.append(_ask(sdk, "kb-local", store, question, ""))
            ctx.log(f"answers: embedded model, {len(rows)} answers")
        result["embedded"] = _summary(rows, time.monotonic() - started)
    finally:
        ctx.procs.stop(nobusy)
        ctx.procs.stop(fake)
    return result


def goals(result: Result) -> list[Goal]:
    out = []
    for name, label in (("fake", "fake upstream"), ("embedded", "embedded model")):
        r = result.get(name)
        share = None if r is None or r["reported_share"] is None else r["reported_share"] * 100
        out.append(
            at_least(
                f"Cited answers ({label}): answers whose reported citations point exactly at "
                "their retrieved passages, with every other [n] flagged invalid",
                share,
                100.0,
                "%",
            )
        )
    return out


def render(result: Result, img: Path) -> str:
    rows = []
    for name, label in (("fake", "fake upstream (asked to cite [1] [3], every 5th [9])"),
                        ("embedded", "embedded SmolLM2-135M (cites on its own)")):  # fmt: skip
        r = result.get(name)
        if r is None:
            continue
        rows.append(
            [
                label,
                str(r["answers"]),
                str(r["citations_written"]),
                f"{r['pointing']} ({fmt((r['pointing_share'] or 0) * 100, 0, '%')})",
                f"{r['reported_exactly']} ({fmt((r['reported_share'] or 0) * 100, 0, '%')})",
                str(r["answers_citing"]),
                f"{r['marked_uncited']} of {r['uncited']}",
                f"{r['on_target']} of {r['answers_citing']}",
                f"{r['retrieved_doc']} of {r['answers']}",
                fmt(r["seconds"] / max(r["answers"], 1), 2, " s"),
            ]
        )
    table = md_table(
        [
            "upstream",
            "answers",
            "[n] written",
            "[n] pointing at a retrieved passage",
            "answers reported exactly",
            "answers citing",
            "uncited answers marked",
            "citing the question's document",
            "question's document retrieved",
            "per answer",
        ],
        rows,
    )
    return (
        "The 42 eval documents uploaded through `/v1/files` and `file_batches` into one store "
        f"(indexed in {fmt(result.get('ingest_s'), 1, ' s')} with the default embedder); "
        "answerable eval questions (zh and en alternating) asked with `x-nobusy-knowledge` "
        "naming it, 6 passages each, `temperature` 0, `max_tokens` 160. *Reported exactly*: "
        "`nobusy.cited` lists every [n] of the answer that is one of its passages, and "
        "`nobusy.invalid` every other one. *Pointing*: of the [n] the upstream wrote, those "
        "that are one of the request's passages — the fake writes what it is asked to; the "
        "embedded model writes its own.\n\n" + table + "\n"
    )


SUITE = Suite(
    name="answers", title="Knowledge base: cited answers", run=run, render=render, goals=goals
)
