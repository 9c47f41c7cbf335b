"""Retrieval quality on the shipped eval set: recall@5, MRR and no-answer detection.

The set (``bench/data/knowledge``) is 42 documents and 232 questions, each with the passage
that answers it (a substring of one document) or none. A hit is right when it comes from that
document and covers at least half of that passage. Every question runs in three modes
(hybrid, BM25 only, vector only) for each embedder. The no-answer threshold is chosen on the
``dev`` questions (the lowest ``score`` that refuses 80% of their no-answer questions) and
then applied to the held-out quarter, which no setting was tuned on.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nobusy.knowledge.chunking import chunk
from nobusy.knowledge.embedder import Embedder, load_embedder
from nobusy.knowledge.index import MODES, Hit, Index
from nobusy.knowledge.settings import KnowledgeSettings

__all__ = ["DATA", "Question", "evaluate", "load_set"]

DATA = Path(__file__).resolve().parent.parent / "data" / "knowledge"
K = 5
DEPTH = 10  # MRR looks this far down
NO_ANSWER_TARGET = 0.80


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    kind: str
    split: str
    doc: str | None
    answer: str | None


def load_set() -> tuple[dict[str, str], list[Question]]:
    """The eval documents by name, and the questions."""
    docs = {p.stem: p.read_text() for p in sorted((DATA / "docs").glob("*.md"))}
    questions = []
    for line in (DATA / "questions.jsonl").read_text().splitlines():
        raw = json.loads(line)
        questions.append(
            Question(
                raw["id"],
                raw["question"],
                raw["kind"],
                raw["split"],
                raw.get("doc"),
                raw.get("answer"),
            )
        )
    return docs, questions


def _right(hit: Hit, q: Question, docs: dict[str, str]) -> bool:
    if q.doc is None or q.answer is None or hit.file_id != q.doc:
        return False
    start = docs[q.doc].index(q.answer)
    end = start + len(q.answer)
    return min(end, hit.end) - max(start, hit.start) >= 0.5 * (end - start)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def evaluate(embedder_name: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every question in every mode against the set indexed with ``embedder_name``."""
    docs, questions = load_set()
    settings = KnowledgeSettings()
    embedder: Embedder = load_embedder(embedder_name)
    with tempfile.TemporaryDirectory() as tmp:
        index = Index(Path(tmp) / "knowledge.db", embedder.name)
        chunks = {
            name: chunk(text, size=settings.chunk_size, overlap=settings.chunk_overlap)
            for name, text in docs.items()
        }
        texts = [c.context for pieces in chunks.values() for c in pieces]
        wall, cpu = time.perf_counter(), _cpu()
        vectors = embedder.embed(texts, query=False)
        embed = {"s": time.perf_counter() - wall, "cpu_s": _cpu() - cpu}
        at = 0
        for name, pieces in chunks.items():
            index.add("eval", name, pieces, vectors[at : at + len(pieces)], {})
            at += len(pieces)
        log(f"knowledge: {embedder.name}: {len(texts)} chunks embedded in {embed['s']:.1f} s")
        wall, cpu = time.perf_counter(), _cpu()
        query_vectors = embedder.embed([q.question for q in questions], query=True)
        per_query_ms = (time.perf_counter() - wall) / len(questions) * 1000
        per_query_cpu_ms = (_cpu() - cpu) / len(questions) * 1000
        runs: dict[str, list[dict[str, Any]]] = {}
        for mode in MODES:
            rows = []
            for q, vector in zip(questions, query_vectors, strict=True):
                hits = index.search(["eval"], q.question, vector, k=DEPTH, mode=mode)
                rank = next((i + 1 for i, h in enumerate(hits) if _right(h, q, docs)), None)
                rows.append(
                    {
                        "id": q.id,
                        "kind": q.kind,
                        "split": q.split,
                        "rank": rank,
                        "top": hits[0].score if hits else 0.0,
                    }
                )
            runs[mode] = rows
        index.close()
    result = {
        "embedder": embedder.name,
        "dimensions": embedder.dimensions,
        "chunks": len(texts),
        "bytes": sum(len(t.encode()) for t in docs.values()),
        "embed": embed,
        "query_embed_ms": per_query_ms,
        "query_embed_cpu_ms": per_query_cpu_ms,
        "modes": {mode: _scores(rows) for mode, rows in runs.items()},
        "no_answer": _no_answer(runs["hybrid"]),
    }
    return result


def _scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def summary(selected: list[dict[str, Any]]) -> dict[str, float]:
        if not selected:
            return {"recall": 0.0, "mrr": 0.0, "n": 0}
        recall = float(np.mean([r["rank"] is not None and r["rank"] <= K for r in selected]))
        mrr = float(np.mean([1 / r["rank"] if r["rank"] else 0.0 for r in selected]))
        return {"recall": recall, "mrr": mrr, "n": len(selected)}

    answerable = [r for r in rows if r["kind"] != "no-answer"]
    out: dict[str, Any] = {"all": summary(answerable)}
    for split in ("dev", "heldout"):
        out[split] = summary([r for r in answerable if r["split"] == split])
    kinds = sorted({r["kind"] for r in answerable})
    out["kinds"] = {kind: summary([r for r in answerable if r["kind"] == kind]) for kind in kinds}
    return out


def _no_answer(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The threshold that refuses 80% of the dev no-answer questions, and how it fares."""
    dev_none = sorted(r["top"] for r in rows if r["kind"] == "no-answer" and r["split"] == "dev")
    threshold = dev_none[int(np.ceil(NO_ANSWER_TARGET * len(dev_none))) - 1] + 1e-6

    def rates(split: str | None) -> dict[str, float]:
        chosen = [r for r in rows if split is None or r["split"] == split]
        none = [r for r in chosen if r["kind"] == "no-answer"]
        answerable = [r for r in chosen if r["kind"] != "no-answer"]
        return {
            "detected": float(np.mean([r["top"] < threshold for r in none])) if none else 0.0,
            "false_refusals": float(np.mean([r["top"] < threshold for r in answerable])),
            "no_answer_questions": len(none),
        }

    return {
        "threshold": threshold,
        "all": rates(None),
        "dev": rates("dev"),
        "heldout": rates("heldout"),
    }
