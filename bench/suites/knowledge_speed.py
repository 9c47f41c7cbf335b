"""Knowledge base speed: search latency and memory at 100,000 chunks, ingestion per stage.

Search: a synthetic store of 100,000 chunks, each a random mix of the eval documents'
sentences with numbers changed (so no two hash alike), indexed as real chunks are (jieba
words into FTS5); their vectors are the eval chunks' real vectors with noise added, so the
vector search has the real model's geometry without embedding 100,000 texts first. The eval
questions, their vectors embedded beforehand, are the queries; the time is ``Index.search``
alone (query embedding is reported apart). Ingestion: the eval documents, several times over,
through each stage a file takes: read and decode, chunk, embed, index; then the same files
through the ``Ingestor`` as a server ingests them (records, claims, embedding one group while
the indexing thread adds the one before).
"""

from __future__ import annotations

import os
import random
import re
import resource
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.suites.knowledge_quality import DATA, load_set
from nobusy.knowledge.chunking import Chunk, chunk
from nobusy.knowledge.embedder import load_embedder
from nobusy.knowledge.index import Index
from nobusy.knowledge.settings import KnowledgeSettings
from nobusy.knowledge.vectors import StoreVectors

__all__ = ["ingestion", "pipeline", "search_at_scale"]

SEED = 15
_SENTENCE = re.compile(r"[^。！？\n.!?]+[。！？.!?]?")
_NUMBER = re.compile(r"\d+")
_LINE_END = re.compile(r"(?<=\S)$", re.MULTILINE)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def search_at_scale(
    embedder_name: str,
    chunks: int,
    log: Callable[[str], None] = print,
    *,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Search p50/p95 per mode and memory with ``chunks`` synthetic chunks in one store.

    ``keep``: a directory where the built index is kept and, when one of that size is there,
    reused (building 100,000 chunks takes minutes); None builds a fresh one in a temporary
    directory."""
    docs, questions = load_set()
    embedder = load_embedder(embedder_name)
    query_vectors = embedder.embed([q.question for q in questions], query=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep if keep is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"knowledge-{embedder.name}-{chunks}.db"
        build_s = None
        if not path.exists():
            build_s = _build(path, embedder_name, chunks, docs)
            log(f"knowledge: {chunks:,} synthetic chunks indexed in {build_s:.0f} s")
        rss_before = _rss_mb()
        index = Index(path, embedder.name)
        index.search(["big"], "年假", query_vectors[0], k=5)  # loads the store's vectors
        rss_after = _rss_mb()
        timings: dict[str, dict[str, float]] = {}
        for mode in ("hybrid", "bm25", "vector"):
            times, cpu = [], _cpu()
            for q, vector in zip(questions, query_vectors, strict=True):
                t0 = time.perf_counter()
                index.search(["big"], q.question, vector, k=5, mode=mode)
                times.append((time.perf_counter() - t0) * 1000)
            timings[mode] = {
                "p50_ms": statistics.median(times),
                "p95_ms": _percentile(times, 95),
                "max_ms": max(times),
                "cpu_ms": (_cpu() - cpu) / len(times) * 1000,
            }
            log(
                f"knowledge: search {mode} p50 {timings[mode]['p50_ms']:.1f} ms, "
                f"p95 {timings[mode]['p95_ms']:.1f} ms, "
                f"{timings[mode]['cpu_ms']:.1f} CPU-ms a query"
            )
        db_mb = sum(p.stat().st_size for p in folder.glob(path.name + "*")) / 2**20
        index.close()
        recall = _partition_recall(path, query_vectors)
        log(f"knowledge: partitioned vector search recall@10 of the exact search {recall}")
    return {
        "vector_recall": recall,
        "chunks": chunks,
        "queries": len(questions),
        "build_s": build_s,
        "search": timings,
        "rss_mb_added": rss_after - rss_before,
        "db_mb": db_mb,
        "vectors_mb": chunks * embedder.dimensions * 4 / 2**20,
    }


def _partition_recall(path: Path, query_vectors: np.ndarray) -> dict[str, float]:
    """How many of the exact 10 nearest the partitioned vector search finds (1.0: all), on the
    synthetic store and on a harder matrix of the same size: each row a random mix of three
    real chunks' vectors with noise, so neighbourhoods overlap as they do in real text."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        stored = StoreVectors.load(db, "big")
    finally:
        db.close()
    base = stored.matrix
    rng = np.random.default_rng(SEED)
    weights = rng.dirichlet(np.ones(3), len(base)).astype(np.float32)
    mixed = (base[rng.integers(0, len(base), (len(base), 3))] * weights[..., None]).sum(axis=1)
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    mixed += rng.normal(0, 1 / np.sqrt(base.shape[1]), mixed.shape).astype(np.float32)
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    out = {}
    for name, matrix in (("synthetic", base), ("mixed", np.ascontiguousarray(mixed))):
        ids = np.arange(len(matrix), dtype=np.int64)
        codes = np.zeros(len(matrix), dtype=np.int32)
        parted = StoreVectors.partitioned(ids, codes, (("big", "f"),), matrix)
        exact = StoreVectors(ids, codes, (("big", "f"),), matrix)
        found = [
            len({h[0] for h in parted.nearest(q, 10)} & {h[0] for h in exact.nearest(q, 10)})
            for q in query_vectors
        ]
        out[name] = float(np.mean(found)) / 10
    return out


def _build(path: Path, embedder_name: str, chunks: int, docs: dict[str, str]) -> float:
    """Index ``chunks`` synthetic chunks into store ``big`` at ``path``; return the seconds."""
    rng = random.Random(SEED)
    settings = KnowledgeSettings()
    sentences = [
        s.strip() for text in docs.values() for s in _SENTENCE.findall(text) if len(s.strip()) > 8
    ]
    embedder = load_embedder(embedder_name)
    real = [
        c.context
        for text in docs.values()
        for c in chunk(text, size=settings.chunk_size, overlap=settings.chunk_overlap)
    ]
    base = embedder.embed(real, query=False)
    noise = np.random.default_rng(SEED)
    partial = path.with_suffix(".building")
    for stale in path.parent.glob(partial.name + "*"):
        stale.unlink()
    index = Index(partial, embedder.name)
    started = time.perf_counter()
    batch = 2000
    for first in range(0, chunks, batch):
        texts = []
        for _ in range(min(batch, chunks - first)):
            picked = rng.sample(sentences, rng.randint(3, 8))
            text = "".join(picked)
            texts.append(_NUMBER.sub(lambda m: str(rng.randint(1, 99999)), text))
        pieces = [Chunk(t, 0, len(t)) for t in texts]
        rows = base[noise.integers(0, len(base), len(texts))]
        rows = rows + noise.normal(0, 0.15 / np.sqrt(base.shape[1]), rows.shape)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        index.add("big", f"file-{first // batch}", pieces, rows.astype(np.float32), {})
    build_s = time.perf_counter() - started
    index.close()
    # Only a finished build is kept under the name a later run reuses.
    partial.rename(path)
    return build_s


def ingestion(
    embedder_name: str, copies: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """MB of text per minute through each stage, wall clock and CPU, over ``copies`` of the
    eval documents (every line of each copy changed, so deduplication skips none of it)."""
    settings = KnowledgeSettings()
    embedder = load_embedder(embedder_name)
    embedder.embed(["warm up"], query=False)
    paths = sorted((DATA / "docs").glob("*.md"))
    stages = {name: {"s": 0.0, "cpu_s": 0.0} for name in ("parse", "chunk", "embed", "index")}
    total_bytes = 0

    def timed(stage: str, work: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), _cpu()
        result = work()
        stages[stage]["s"] += time.perf_counter() - wall
        stages[stage]["cpu_s"] += _cpu() - cpu
        return result

    with tempfile.TemporaryDirectory() as tmp:
        index = Index(Path(tmp) / "knowledge.db", embedder.name)
        # jieba builds its dictionary on first use (~0.7 s, once per process): not ingestion.
        index._segmenter.words("热身")
        for copy in range(copies):
            for path in paths:
                text = timed("parse", lambda p=path: p.read_bytes().decode("utf-8"))
                # Every line changed, so every chunk is new: no embedding is skipped as a duplicate.
                text = _LINE_END.sub(f" ({copy})", text)
                total_bytes += len(text.encode())
                pieces = timed(
                    "chunk",
                    lambda t=text: chunk(
                        t, size=settings.chunk_size, overlap=settings.chunk_overlap
                    ),
                )
                vectors = timed(
                    "embed", lambda p=pieces: embedder.embed([c.context for c in p], query=False)
                )
                timed(
                    "index",
                    lambda p=pieces, v=vectors, n=f"{path.stem}-{copy}": index.add(
                        "ingest", n, p, v, {}
                    ),
                )
        index.close()
    mb = total_bytes / 2**20
    for figures in stages.values():
        figures["mb_per_min"] = mb / figures["s"] * 60 if figures["s"] else float("inf")
        figures["mb_per_cpu_min"] = mb / figures["cpu_s"] * 60 if figures["cpu_s"] else float("inf")
    wall = sum(f["s"] for f in stages.values())
    cpu = sum(f["cpu_s"] for f in stages.values())
    log(f"knowledge: ingested {mb:.2f} MB in {wall:.0f} s")
    return {
        "mb": mb,
        "stages": stages,
        "mb_per_min": mb / wall * 60,
        "mb_per_cpu_min": mb / cpu * 60,
        "load_average": os.getloadavg(),
        "embedder_threads": 1,
        "tokenizer": type(getattr(getattr(embedder, "_model", None), "_sp", None)).__module__,
    }


def pipeline(embedder_name: str, copies: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """MB of text per minute, wall clock and CPU, through ``Ingestor.ingest`` (the server's
    path) over the same changed copies of the eval documents as ``ingestion``."""
    import io

    from nobusy.knowledge.base import KnowledgeBase
    from nobusy.settings import Settings
    from nobusy.store.knowledge import new_id

    load_embedder(embedder_name).embed(["warm up"], query=False)
    paths = sorted((DATA / "docs").glob("*.md"))
    with tempfile.TemporaryDirectory() as tmp:
        kb = KnowledgeBase(Settings(data_dir=Path(tmp)))
        try:
            store = kb.records.create_store(None, "bench", embedder_name, {}, None)
            jobs, total_bytes = [], 0
            for copy in range(copies):
                for path in paths:
                    data = _LINE_END.sub(f" ({copy})", path.read_text()).encode()
                    total_bytes += len(data)
                    file_id = new_id("file-")
                    size, digest = kb.blobs.write(file_id, io.BytesIO(data))
                    kb.records.add_file(file_id, None, path.name, "assistants", size, digest)
                    kb.records.attach(store.id, file_id, {}, None)
                    jobs.append(file_id)
            kb.index(embedder_name).count(store.id)  # the index opened, jieba loaded
            kb.index(embedder_name)._segmenter.words("热身")
            wall, cpu = time.perf_counter(), _cpu()
            for file_id in jobs:
                kb.ingestor.ingest(store.id, file_id)
            wall, cpu = time.perf_counter() - wall, _cpu() - cpu
            done = kb.records.counts(store.id)["completed"]
        finally:
            kb.close()
    mb = total_bytes / 2**20
    log(f"knowledge: the Ingestor ingested {mb:.2f} MB in {wall:.1f} s ({done} files)")
    return {
        "mb": mb,
        "files": done,
        "s": wall,
        "cpu_s": cpu,
        "mb_per_min": mb / wall * 60,
        "mb_per_cpu_min": mb / cpu * 60,
        "load_average": os.getloadavg(),
    }


def _main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m bench.suites.knowledge_speed",
        description="Search latency at scale alone (keep the built index with --keep).",
    )
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--embedder", default=KnowledgeSettings().embedding_model)
    parser.add_argument("--keep", type=Path, help="directory to keep and reuse the index in")
    args = parser.parse_args()
    result = search_at_scale(args.embedder, args.chunks, keep=args.keep)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    _main()
