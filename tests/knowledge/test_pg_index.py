"""The index in PostgreSQL (pgvector, tsvector over jieba words): the SQLite index's tests run
again against ``PgIndex``, then what only a shared database shows (two processes' indexes,
HNSW in the plan). Skips, saying why, where the embedded PostgreSQL cannot start."""

from __future__ import annotations

from collections.abc import Iterator

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
