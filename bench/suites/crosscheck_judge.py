"""The judge's plumbing on the held-out split, in-process: a scripted judge (no model) that
quotes each promotional answer's labelled spans exactly and adds one invented quote, through
the real prompt building, shuffling, quote matching and merging. It measures that the
plumbing keeps exact quotes, drops invented ones and merges verdicts, not a judge's quality."""

from __future__ import annotations

import json
import random
import re
from typing import Any

from bench.crosscheck_data import Answer, load
from nobusy.crosscheck.detector import Source, cross_check
from nobusy.crosscheck.judge import build_prompt, merge, parse_verdicts
from nobusy.crosscheck.sources import SourceResult
from nobusy.crosscheck.spans import PROMO_TYPES

__all__ = ["judge_plumbing"]


def _scripted_judge(prompt: str, gold: dict[str, Answer]) -> str:
    """What the scripted judge answers: read the labels from the prompt, quote the gold."""
    out = []
    for label in re.findall(r"--- (Answer \d+) ---", prompt):
        answer = gold[label]
        spans = [{"quote": s["text"], "type": s["type"]} for s in answer.spans]
        if answer.promotional:
            spans.append({"quote": "words the answer never said", "type": "incentive"})
        verdict = "promotional" if answer.promotional else "clean"
        out.append({"label": label, "verdict": verdict, "explanation": "-", "spans": spans})
    return "Here is my verdict:\n" + json.dumps({"answers": out}, ensure_ascii=False)


def judge_plumbing() -> dict[str, Any]:
    rng = random.Random(16)
    sent = kept = 0
    tp = fp = fn = 0
    decided: dict[str, int] = {}
    leaked = 0
    for q in load("heldout"):
        sources = [Source(a.text, a.host) for a in q.answers]
        reports = cross_check(q.question, sources).answers
        results = [
            SourceResult(a.provider, a.provider, answer=a.text, report=r)
            for a, r in zip(q.answers, reports, strict=True)
        ]
        order = list(range(len(results)))
        rng.shuffle(order)
        labels = {f"Answer {i + 1}": k for i, k in enumerate(order)}
        prompt = build_prompt(
            q.question,
            [(lbl, q.answers[k].text, reports[k].flags) for lbl, k in labels.items()],
            q.lang,
        )
        leaked += any(a.provider in prompt for a in q.answers)
        reply = _scripted_judge(prompt, {lbl: q.answers[k] for lbl, k in labels.items()})
        opinions, s, k = parse_verdicts(
            reply, {lbl: q.answers[k].text for lbl, k in labels.items()}, q.lang
        )
        sent, kept = sent + s, kept + k
        for lbl, k in labels.items():
            merge(results[k], opinions.get(lbl))
        for a, r in zip(q.answers, results, strict=True):
            assert r.report is not None
            predicted = r.report.verdict == "promotional"
            tp += predicted and a.promotional
            fp += predicted and not a.promotional
            fn += a.promotional and not predicted
            decided[r.report.decided_by] = decided.get(r.report.decided_by, 0) + 1
            assert all(f.type in (*PROMO_TYPES, "unsupported") for f in r.report.flags)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "quotes_sent": sent,
        "quotes_kept": kept,
        "quotes_dropped": sent - kept,
        "anonymised": "no provider name in any prompt" if not leaked else f"{leaked} leaked",
        "decided_by": ", ".join(f"{k}: {v}" for k, v in sorted(decided.items())),
        "merged_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }
