"""The index in PostgreSQL (pgvector, tsvector over jieba words): the SQLite index's tests run
again against ``PgIndex``, then what only a shared database shows (two processes' indexes,
HNSW in the plan). Skips, saying why, where the embedded PostgreSQL cannot start."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from nobusy.errors import InvalidRequest
from nobusy.knowledge.embedder import Embedder
from nobusy.knowledge.pg_index import PgIndex
from tests.knowledge import test_index as sqlite_tests
from tests.knowledge.test_index import LEAVE, TRAVEL, WIRES, _add

# Every test of the SQLite index that takes the ``index`` fixture runs here too, with the
# fixture below: the same assertions, on PostgreSQL. (Those that open files are SQLite's.)
_FILE_BOUND = {
    "test_a_store_refuses_vectors_of_another_model",
    "test_the_index_survives_a_reopen_and_threads",
}
globals().update(
    {
        name: getattr(sqlite_tests, name)
        for name in dir(sqlite_tests)
        if name.startswith("test_") and name not in _FILE_BOUND
    }
)


@pytest.fixture()
def index(pg_url: str, embedder: Embedder) -> Iterator[PgIndex]:
    index = PgIndex(pg_url, embedder.name)
    _add(index, embedder, "vs_a", "leave", LEAVE, department="hr", year=2024)  # type: ignore[arg-type]
    _add(index, embedder, "vs_a", "travel", TRAVEL, department="finance", year=2023)  # type: ignore[arg-type]
    _add(index, embedder, "vs_a", "wires", WIRES, department="ops", year=2025)  # type: ignore[arg-type]
    yield index
    index.close()


def test_a_store_refuses_vectors_of_another_model_of_any_replica(
    pg_url: str, embedder: Embedder
) -> None:
    first = PgIndex(pg_url, embedder.name)
    other = PgIndex(pg_url, "another-model")  # another replica, configured otherwise
    try:
        _add(first, embedder, "vs_x", "leave", LEAVE)  # type: ignore[arg-type]
        assert other.store_embedder("vs_x") == embedder.name
        with pytest.raises(InvalidRequest) as caught:
            _add(other, embedder, "vs_x", "travel", TRAVEL)  # type: ignore[arg-type]
        assert caught.value.code == "embedding_model_mismatch"
    finally:
        first.close()
        other.close()


def test_what_one_replica_adds_the_other_finds(pg_url: str, embedder: Embedder) -> None:
    writer, reader = PgIndex(pg_url, embedder.name), PgIndex(pg_url, embedder.name)
    try:
        _add(writer, embedder, "vs_a", "leave", LEAVE)  # type: ignore[arg-type]
        # The same text added by the other replica is not stored twice.
        assert _add(reader, embedder, "vs_a", "leave-2", LEAVE) == 0  # type: ignore[arg-type]
        hits = reader.search(["vs_a"], "婚假", None, k=1, mode="bm25")
        assert hits and "婚假" in hits[0].text
    finally:
        writer.close()
        reader.close()


def test_vector_search_uses_the_hnsw_index(index: PgIndex, embedder: Embedder, pg_url: str) -> None:
    import psycopg

    dims = embedder.dimensions
    literal = "[" + ",".join(["0.01"] * dims) + "]"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ANALYZE kb_chunks")
        # Three files: reading them all and sorting would win on cost.
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_sort = off")
        plan = conn.execute(
            f"EXPLAIN SELECT id FROM kb_chunks c WHERE c.dims = {dims} AND c.store_id = "
            f"ANY(ARRAY['vs_a']) ORDER BY c.embedding::vector({dims}) <=> "
            f"'{literal}'::vector({dims}) LIMIT 5".encode()
        ).fetchall()
    assert any(f"kb_chunks_hnsw_{dims}" in row[0] for row in plan), plan


def _word_counts(pg_url: str) -> tuple[dict[str, int], dict[str, int]]:
    """``kb_word_chunks`` as kept, and as counted afresh from the chunks ('': all chunks)."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        kept = dict(conn.execute("SELECT word, chunks FROM kb_word_chunks").fetchall())
        counted = dict(
            conn.execute(
                "SELECT w, count(*) FROM kb_chunks, unnest(tsvector_to_array(tsv)) AS w GROUP BY w "
                "UNION ALL SELECT '', count(*) FROM kb_chunks HAVING count(*) > 0"
            ).fetchall()
        )
    return kept, counted


def test_word_counts_follow_adds_and_removes(pg_url: str, embedder: Embedder) -> None:
    index = PgIndex(pg_url, embedder.name)
    try:
        _add(index, embedder, "vs_a", "leave", LEAVE)  # type: ignore[arg-type]
        _add(index, embedder, "vs_a", "leave-copy", LEAVE)  # type: ignore[arg-type]
        _add(index, embedder, "vs_b", "travel", TRAVEL)  # type: ignore[arg-type]
        kept, counted = _word_counts(pg_url)
        assert (
            kept == counted
            and kept["婚假"] > 0
            and kept[""] == index.count("vs_a") + index.count("vs_b")
        )
        # A copy's chunks are the original's: removing one file of the two keeps them.
        index.remove_file("vs_a", "leave-copy")
        assert _word_counts(pg_url)[0] == kept
        index.remove_file("vs_a", "leave")
        kept, counted = _word_counts(pg_url)
        assert kept == counted and "婚假" not in kept
        index.remove_store("vs_b")
        assert _word_counts(pg_url) == ({}, {})
    finally:
        index.close()


def test_word_counts_stay_right_when_replicas_write_at_once(pg_url: str) -> None:
    import numpy as np

    from nobusy.knowledge.chunking import Chunk

    # Four replicas, each adding and removing files whose chunks share most of their words:
    # their counts' rows are locked in one order, so none deadlocks and none is lost.
    replicas = [PgIndex(pg_url, "test-model") for _ in range(4)]

    def write(n: int, index: PgIndex) -> None:
        for round_ in range(5):
            texts = [f"办理 流程 说明 第{n}-{round_}-{i}号" for i in range(20)]
            vectors = np.ones((20, 8), dtype=np.float32)
            index.add("vs_a", f"f{n}-{round_}", [Chunk(t, 0, len(t)) for t in texts], vectors, {})
            if round_ % 2:
                index.remove_file("vs_a", f"f{n}-{round_ - 1}")

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, range(4), replicas))
        kept, counted = _word_counts(pg_url)
        assert kept == counted and kept["办理"] == kept[""] == 4 * 3 * 20
    finally:
        for index in replicas:
            index.close()


def test_keyword_search_leaves_out_the_commonest_words_past_its_budget(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from nobusy.knowledge import pg_keyword
    from nobusy.knowledge.chunking import Chunk

    monkeypatch.setattr(pg_keyword, "POSTINGS_BUDGET", 40)
    # Every chunk says 办理 (more chunks than the budget), one says 挂失 and is longer (a
    # worse ts_rank_cd for 办理 alone).
    texts = [f"第{i}号 业务 办理 流程" for i in range(60)]
    texts[30] = "银行卡 挂失 须 本人 到 柜台 办理 并 出示 证件"
    vectors = np.random.default_rng(3).normal(size=(60, 8)).astype(np.float32)
    index = PgIndex(pg_url, "test-model")
    try:
        index.add("vs_big", "many", [Chunk(t, 0, len(t)) for t in texts], vectors, {})
        with index._conn() as conn:
            assert list(pg_keyword.weighted_words(conn, ["挂失", "办理"])) == ["挂失"]
            # A query of common words only keeps the rarest of them.
            assert list(pg_keyword.weighted_words(conn, ["流程", "办理"])) == ["流程"]
        hits = index.search(["vs_big"], "挂失 办理", None, k=3, mode="bm25")
        assert hits[0].text == texts[30]
        # Coverage still counts the word left out: the hit holds both words of the query.
        assert hits[0].scores["coverage"] == 1.0
        assert index.search(["vs_big"], "业务 办理", None, k=3, mode="bm25")
    finally:
        index.close()


def test_a_rare_word_outweighs_a_common_one(pg_url: str) -> None:
    import numpy as np

    from nobusy.knowledge.chunking import Chunk

    # Without idf, the chunk saying the common 办理 three times ranked above the one saying
    # the rare 挂失 once.
    texts = [f"第{i}号 业务 办理 流程 说明 文件" for i in range(30)]
    texts[10] = "办理 办理 办理"
    texts[20] = "银行卡 挂失 须 本人 到 柜台 并 出示 有效 证件"
    vectors = np.random.default_rng(4).normal(size=(30, 8)).astype(np.float32)
    index = PgIndex(pg_url, "test-model")
    try:
        index.add("vs_a", "many", [Chunk(t, 0, len(t)) for t in texts], vectors, {})
        hits = index.search(["vs_a"], "挂失 办理", None, k=3, mode="bm25")
        assert hits[0].text == texts[20]
    finally:
        index.close()


def test_within_budget_keeps_the_rarest_words_in_the_querys_order() -> None:
    from nobusy.knowledge.pg_keyword import within_budget

    counts = {"a": 900, "b": 5, "c": 60, "d": 500}
    assert within_budget(["a", "b", "c"], counts, 1000) == ["a", "b", "c"]
    assert within_budget(["a", "b", "c", "d"], counts, 600) == ["b", "c", "d"]
    assert within_budget(["a", "d"], counts, 10) == ["d"]  # the rarest always stays
    assert within_budget(["x", "a"], counts, 10) == ["x"]  # a word no chunk holds counts 0


def test_a_long_chunks_tsvector_stays_in_its_row(pg_url: str) -> None:
    import numpy as np
    import psycopg

    from nobusy.knowledge.chunking import Chunk

    # Words enough for a ~2 kB tsvector: beside its text and words, past TOAST's threshold.
    text = " ".join(f"条款{i} 规定{i}" for i in range(150))
    index = PgIndex(pg_url, "test-model")
    try:
        vector = np.ones((1, 8), dtype=np.float32)
        index.add("vs_a", "long", [Chunk(text, 0, len(text))], vector, {})
    finally:
        index.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        size, out_of_line = conn.execute(
            "SELECT pg_column_size(tsv), pg_column_toast_chunk_id(tsv) IS NOT NULL FROM kb_chunks"
        ).fetchone()  # type: ignore[misc]
    assert size > 2000 and not out_of_line
