"""Search past the sizes the small tests reach: the partitioned vector search agrees with the
exact one, BM25 leaves out a query's commonest words past its budget and still finds by the
rare ones, and a store whose matches rank below another store's still gets them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nobusy.knowledge.chunking import Chunk
from nobusy.knowledge.index import POSTINGS_BUDGET, Index
from nobusy.knowledge.vectors import EXACT_BELOW, StoreVectors

DIMS = 24


def _unit(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows / np.linalg.norm(rows, axis=-1, keepdims=True), dtype=np.float32)


def _clustered(n: int, seed: int) -> np.ndarray:
    """``n`` unit rows around 60 centres: a matrix with real neighbourhoods, as text has."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(60, DIMS))
    return _unit(centres[rng.integers(0, 60, n)] + rng.normal(0, 0.35, (n, DIMS)))


def test_a_large_store_is_partitioned_and_finds_what_the_exact_search_finds() -> None:
    n = EXACT_BELOW + 500
    matrix = _clustered(n, 1)
    ids = np.arange(1, n + 1, dtype=np.int64)
    codes = (np.arange(n) % 7).astype(np.int32)
    files = tuple(("vs", f"file-{i}") for i in range(7))
    parted = StoreVectors.partitioned(ids, codes, files, matrix)
    exact = StoreVectors(ids, codes, files, matrix)
    assert parted.centroids is not None and parted.starts is not None
    assert int(parted.starts[-1]) == n and sorted(parted.ids.tolist()) == ids.tolist()

    queries = _unit(matrix[:40] + np.random.default_rng(2).normal(0, 0.2, (40, DIMS)))
    found = [
        len({h[0] for h in parted.nearest(q, 10)} & {h[0] for h in exact.nearest(q, 10)}) / 10
        for q in queries
    ]
    assert np.mean(found) >= 0.95
    # Each hit's cosine is the exact one, and a filter keeps only the files it allows.
    for chunk_id, cosine, file_id in parted.nearest(queries[0], 5, {("vs", "file-3")}):
        assert file_id == "file-3"
        assert abs(cosine - float(matrix[chunk_id - 1] @ queries[0])) < 1e-5


def test_a_filter_allowing_few_rows_of_a_large_store_scores_them_all() -> None:
    n = EXACT_BELOW + 500
    matrix = _clustered(n, 6)
    ids = np.arange(n, dtype=np.int64)
    # One file of 50 rows scattered over every partition; the rest in another file.
    codes = np.zeros(n, dtype=np.int32)
    codes[::411] = 1
    files = (("vs", "rest"), ("vs", "few"))
    parted = StoreVectors.partitioned(ids, codes, files, matrix)
    query = matrix[0]
    found = parted.nearest(query, 50, {("vs", "few")})
    few = ids[codes == 1]
    expected = few[np.argsort(-(matrix[few] @ query))]
    assert [h[0] for h in found] == expected.tolist()


def test_a_small_store_is_searched_exactly() -> None:
    matrix = _clustered(300, 3)
    ids = np.arange(300, dtype=np.int64)
    vectors = StoreVectors.partitioned(ids, np.zeros(300, np.int32), (("vs", "f"),), matrix)
    assert vectors.centroids is None
    best = vectors.nearest(matrix[17], 1)
    assert best[0][0] == 17


def _filler(tmp_path: Path) -> Index:
    """A store whose every chunk says 办理 (more chunks than the budget) and a few say 挂失."""
    index = Index(tmp_path / "knowledge.db", "test-model")
    count = POSTINGS_BUDGET + 200
    texts = [f"第{i}号 业务 办理 流程 说明" for i in range(count)]
    texts[count // 2] = "银行卡 挂失 须 本人 办理"
    vectors = _clustered(count, 4)
    index.add("vs_big", "many", [Chunk(t, 0, len(t)) for t in texts], vectors, {})
    return index


def test_bm25_leaves_out_the_commonest_words_past_its_budget(tmp_path: Path) -> None:
    index = _filler(tmp_path)
    hits = index.search(["vs_big"], "挂失 办理", None, k=3, mode="bm25")
    assert hits[0].text == "银行卡 挂失 须 本人 办理"
    # Coverage still counts the word left out: the hit holds both words of the query.
    assert hits[0].scores["coverage"] == 1.0
    # A query of common words only keeps the rarest of them and still answers.
    assert index.search(["vs_big"], "业务 办理", None, k=3, mode="bm25")


def test_a_store_gets_its_matches_when_another_store_ranks_above_it(tmp_path: Path) -> None:
    index = _filler(tmp_path)
    # A long passage with the word once: the other store's short ones all rank above it.
    text = "挂失 之后 补办 新卡 需要 七天 " * 20 + "办理"
    index.add(
        "vs_small",
        "policy",
        [Chunk(text, 0, len(text))],
        _clustered(1, 5),
        {},
    )
    hits = index.search(["vs_small"], "办理", None, k=3, mode="bm25")
    assert [h.file_id for h in hits] == ["policy"]


def _store(index: Index, store: str, file_id: str, rows: np.ndarray, start: int = 0) -> None:
    texts = [f"段落 {start + i} 号" for i in range(len(rows))]
    index.add(store, file_id, [Chunk(t, 0, len(t)) for t in texts], rows, {})


def test_files_added_after_a_search_are_found_and_removed_ones_not(tmp_path: Path) -> None:
    index = Index(tmp_path / "knowledge.db", "test-model")
    rows = _clustered(EXACT_BELOW + 100, 7)
    _store(index, "vs", "old", rows[:-100])
    query = rows[-1]
    assert all(h.file_id == "old" for h in index.search(["vs"], "", query, k=3, mode="vector"))
    # Added while the store's vectors are in memory: read beside them, not reloaded.
    _store(index, "vs", "new", rows[-100:], start=EXACT_BELOW)
    hits = index.search(["vs"], "", query, k=3, mode="vector")
    assert hits[0].file_id == "new" and hits[0].scores["vector"] > 0.999
    assert index._vectors["vs"].added is not None  # the new rows beside the loaded ones
    index.remove_file("vs", "new")
    assert all(h.file_id == "old" for h in index.search(["vs"], "", query, k=3, mode="vector"))


def test_a_file_another_process_adds_is_found(tmp_path: Path) -> None:
    path = tmp_path / "knowledge.db"
    searcher, writer = Index(path, "test-model"), Index(path, "test-model")
    rows = _clustered(300, 8)
    _store(writer, "vs", "first", rows[:200])
    query = rows[250]
    assert searcher.search(["vs"], "", query, k=1, mode="vector")[0].file_id == "first"
    _store(writer, "vs", "second", rows[200:], start=200)
    assert searcher.search(["vs"], "", query, k=1, mode="vector")[0].file_id == "second"
    writer.remove_file("vs", "second")
    assert searcher.search(["vs"], "", query, k=1, mode="vector")[0].file_id == "first"
