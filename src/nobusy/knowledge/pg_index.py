"""The search index in PostgreSQL: ``Index``'s behaviour over tables every replica shares.

    kb_chunks        one row per distinct text in a store (sha-256 of the text, as ``Index``):
                     offsets, heading, its jieba words and, generated from them, a ``tsvector``
                     of the 'simple' configuration (the words are already cut: it only splits
                     at the spaces and lowercases), kept in the row, and its vector (pgvector)
    kb_chunk_files   which files hold each chunk
    kb_index_files   each file's attributes (JSON text), which filters are evaluated on
    kb_index_stores  each store's embedding model: vectors of two models never meet in a store
    kb_word_chunks   how many chunks hold each word (every store's), kept by triggers

Vectors are stored and searched language-neutral, as ``Index`` does (``knowledge.neutral``;
migration ``m015_neutral_vectors`` converted rows written before).

Keyword search ranks by each word's ``ts_rank_cd`` (cover density, normalised by the log of the
chunk's length) times its inverse document frequency, over the query's rarer words only when
its common ones would cost more than a budget of rows (``nobusy.knowledge.pg_keyword``). Vector
search uses the HNSW index of the vector's dimension (cosine), scanning on
(``hnsw.iterative_scan``) until enough rows of the wanted stores are found. The fusion (RRF),
the calibrated relevance, MMR and the filters are ``Index``'s own functions; a filter is
evaluated by SQLite's JSON functions over the stores' file attributes, so it means exactly what
it means in SQLite.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from nobusy.errors import InvalidRequest
from nobusy.knowledge.chunking import Chunk
from nobusy.knowledge.filters import compile_filter
from nobusy.knowledge.index import MODES, Hit, _digest, _ranked, _Row
from nobusy.knowledge.neutral import neutral
from nobusy.knowledge.pg_keyword import tsquery, weighted_words
from nobusy.knowledge.segment import Segmenter, segmenter
from nobusy.store.pg_migrations import migrated
from nobusy.store.postgres import CONNECT_TIMEOUT, startup_error, translated, vector_text

__all__ = ["PgIndex"]

# HNSW candidates kept while searching: at least the pool wanted (pgvector's default is 40).
_EF_SEARCH = 100


class PgIndex:
    """Every store's chunks of one embedding model in the PostgreSQL at ``url``."""

    def __init__(self, url: str, embedder_name: str, *, dictionary: Path | None = None) -> None:
        self.url = url
        self.embedder_name = embedder_name
        self._segmenter: Segmenter = segmenter(dictionary)
        migrated(url).close()
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=4,
            open=False,
            timeout=CONNECT_TIMEOUT * 2,
            kwargs={"autocommit": True, "application_name": "nobusy"},
            configure=_configure,
            name="nobusy-knowledge",
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT * 2)
        except (psycopg.Error, OSError, PoolTimeout) as exc:
            self._pool.close()
            raise startup_error(exc, url) from None
        self._lock = threading.Lock()  # only for ``close``

    def close(self) -> None:
        with self._lock:
            self._pool.close()

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        with translated(self.url, "knowledge index"), self._pool.connection() as conn:
            yield conn

    # --- Writing --------------------------------------------------------------------------------

    def add(
        self,
        store_id: str,
        file_id: str,
        chunks: Sequence[Chunk],
        vectors: npt.NDArray[np.float32],
        attributes: Mapping[str, object],
    ) -> int:
        """Add a file's chunks and their vectors; return how many were new to the store."""
        if len(chunks) != len(vectors):
            raise ValueError("PgIndex.add: one vector per chunk")
        vectors = neutral(self.embedder_name, [c.context for c in chunks], vectors)
        dims = vectors.shape[1] if len(vectors) else None
        rows: dict[str, tuple[Any, ...]] = {}
        for piece, vector in zip(chunks, vectors, strict=True):
            digest = _digest(piece.text)
            if digest not in rows:  # a text twice in one file: one row, as ON CONFLICT would
                words = " ".join(self._segmenter.words(piece.context))
                rows[digest] = (digest, piece.text, piece.heading, piece.start, piece.end, words,
                                vector_text(vector))  # fmt: skip
        columns: list[tuple[Any, ...]] = list(zip(*rows.values(), strict=True))
        with self._conn() as conn, conn.transaction():
            self._claim_store(conn, store_id, dims)
            conn.execute(
                "INSERT INTO kb_index_files (store_id, file_id, attributes) VALUES (%s, %s, %s) "
                "ON CONFLICT (store_id, file_id) DO UPDATE SET attributes = excluded.attributes",
                (store_id, file_id, json.dumps(dict(attributes), ensure_ascii=False)),
            )
            if not rows:
                return 0
            added = conn.execute(
                "INSERT INTO kb_chunks (store_id, file_id, hash, text, heading, start_at, end_at, "
                "words, dims, embedding) SELECT %s, %s, t.hash, t.text, t.heading, t.start_at, "
                "t.end_at, t.words, %s, t.embedding::vector FROM unnest(%s::text[], %s::text[], "
                "%s::text[], %s::bigint[], %s::bigint[], %s::text[], %s::text[]) AS t(hash, "
                "text, heading, start_at, end_at, words, embedding) "
                "ON CONFLICT (store_id, hash) DO NOTHING RETURNING id",
                (store_id, file_id, dims, *(list(c) for c in columns)),
            ).fetchall()
            conn.execute(
                "INSERT INTO kb_chunk_files (chunk_id, store_id, file_id) SELECT id, store_id, "
                "%s FROM kb_chunks WHERE store_id = %s AND hash = ANY(%s) ON CONFLICT DO NOTHING",
                (file_id, store_id, list(rows)),
            )
        return len(added)

    def _claim_store(self, conn: psycopg.Connection[Any], store_id: str, dims: int | None) -> None:
        if dims is not None:
            conn.execute(
                "INSERT INTO kb_index_stores (store_id, embedder, dimensions) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (store_id, self.embedder_name, dims),
            )
        row = conn.execute(
            "SELECT embedder, dimensions FROM kb_index_stores WHERE store_id = %s", (store_id,)
        ).fetchone()
        if row is None:
            return
        if row[0] != self.embedder_name or (dims is not None and dims != row[1]):
            raise InvalidRequest(
                f"vector store {store_id} holds vectors of {row[0]} ({row[1]} dimensions); "
                f"it cannot take vectors of {self.embedder_name}",
                code="embedding_model_mismatch",
            )

    def set_attributes(self, store_id: str, file_id: str, attributes: Mapping[str, object]) -> None:
        """Change the attributes a file's chunks are filtered by."""
        with self._conn() as conn:
            conn.execute(
                "UPDATE kb_index_files SET attributes = %s WHERE store_id = %s AND file_id = %s",
                (json.dumps(dict(attributes), ensure_ascii=False), store_id, file_id),
            )

    def known(self, store_id: str, chunks: Sequence[Chunk]) -> list[bool]:
        """Which of ``chunks`` the store holds already: their vectors need not be computed."""
        digests = [_digest(piece.text) for piece in chunks]
        with self._conn() as conn:
            found = {
                str(row[0])
                for row in conn.execute(
                    "SELECT hash FROM kb_chunks WHERE store_id = %s AND hash = ANY(%s)",
                    (store_id, digests),
                )
            }
        return [digest in found for digest in digests]

    def store_embedder(self, store_id: str) -> str | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT embedder FROM kb_index_stores WHERE store_id = %s", (store_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def remove_file(self, store_id: str, file_id: str) -> int:
        """Remove a file from a store; return how many chunks went with it (shared ones stay)."""
        with self._conn() as conn, conn.transaction():
            ids = [
                int(row[0])
                for row in conn.execute(
                    "DELETE FROM kb_chunk_files WHERE store_id = %s AND file_id = %s "
                    "RETURNING chunk_id",
                    (store_id, file_id),
                )
            ]
            conn.execute(
                "DELETE FROM kb_index_files WHERE store_id = %s AND file_id = %s",
                (store_id, file_id),
            )
            removed = conn.execute(
                "DELETE FROM kb_chunks c WHERE c.id = ANY(%s) AND NOT EXISTS "
                "(SELECT 1 FROM kb_chunk_files cf WHERE cf.chunk_id = c.id)",
                (ids,),
            ).rowcount
            conn.execute(
                "UPDATE kb_chunks c SET file_id = (SELECT min(cf.file_id) FROM kb_chunk_files cf "
                "WHERE cf.chunk_id = c.id) WHERE c.id = ANY(%s) AND c.file_id = %s",
                (ids, file_id),
            )
        return int(removed)

    def remove_store(self, store_id: str) -> None:
        with self._conn() as conn, conn.transaction():
            for table in ("kb_chunk_files", "kb_chunks", "kb_index_files", "kb_index_stores"):
                conn.execute(f"DELETE FROM {table} WHERE store_id = %s", (store_id,))

    def count(self, store_id: str) -> int:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT count(*) FROM kb_chunks WHERE store_id = %s", (store_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    # --- Searching ------------------------------------------------------------------------------

    def search(
        self,
        store_ids: Sequence[str],
        query: str,
        vector: npt.NDArray[np.float32] | None,
        *,
        k: int,
        filters: Mapping[str, object] | None = None,
        score_threshold: float = 0.0,
        mode: str = "hybrid",
        diversity: float = 0.0,
        candidates: int = 50,
    ) -> list[Hit]:
        """The ``k`` chunks of ``store_ids`` that best answer ``query``, best first (as
        ``Index.search``)."""
        if mode not in MODES:
            raise InvalidRequest(f"search mode must be one of {', '.join(MODES)}", param="mode")
        if not store_ids or k <= 0:
            return []
        pool = max(candidates, k)
        if vector is not None:
            vector = neutral(self.embedder_name, [query], np.atleast_2d(vector))[0]
        stores = list(store_ids)
        words = self._segmenter.query_words(query)
        with self._conn() as conn:
            allowed = _allowed_files(conn, stores, filters)
            keyword: list[tuple[int, float, str]] = []
            semantic: list[tuple[int, float, str]] = []
            if mode in ("hybrid", "bm25") and words and allowed != set():
                keyword = _keyword(conn, stores, words, allowed, pool)
            if mode in ("hybrid", "vector") and vector is not None and allowed != set():
                semantic = _nearest(conn, stores, vector, allowed, pool)
            coverage = _coverage(conn, set(words), [chunk_id for chunk_id, _, _ in keyword])
            return _ranked(
                self.embedder_name,
                keyword,
                semantic,
                coverage,
                lambda found: _rows(conn, found),
                vector,
                k=k,
                wanted=pool if diversity > 0 and vector is not None else k,
                score_threshold=score_threshold,
                diversity=diversity,
            )


def _configure(conn: psycopg.Connection[Any]) -> None:
    # Filtered HNSW scans go on until enough rows of the wanted stores pass (pgvector 0.8);
    # relaxed order: the fusion sorts by the cosines returned anyway.
    conn.execute("SET hnsw.iterative_scan = relaxed_order")
    conn.execute(f"SET hnsw.ef_search = {_EF_SEARCH}")


def _allowed_files(
    conn: psycopg.Connection[Any], stores: list[str], filters: Mapping[str, object] | None
) -> set[tuple[str, str]] | None:
    """The (store, file) pairs a filter lets through (None: no filter). The filter is compiled
    for SQLite's JSON functions and evaluated there, over the stores' file attributes (files,
    not chunks: few rows), so its meaning is SQLite's to the letter."""
    if not filters:
        return None
    sql, params = compile_filter(filters)
    rows = conn.execute(
        "SELECT store_id, file_id, attributes FROM kb_index_files WHERE store_id = ANY(%s)",
        (stores,),
    ).fetchall()
    with sqlite3.connect(":memory:") as local:
        local.execute("CREATE TABLE files (store_id TEXT, file_id TEXT, attributes TEXT)")
        local.executemany("INSERT INTO files VALUES (?, ?, ?)", rows)
        passed = local.execute(f"SELECT store_id, file_id FROM files WHERE {sql}", params)
        return {(str(store), str(file)) for store, file in passed}


def _pairs(allowed: set[tuple[str, str]]) -> tuple[list[str], list[str]]:
    return [store for store, _ in allowed], [file for _, file in allowed]


def _keyword(
    conn: psycopg.Connection[Any],
    stores: list[str],
    words: Sequence[str],
    allowed: set[tuple[str, str]] | None,
    limit: int,
) -> list[tuple[int, float, str]]:
    """The chunks holding any of ``words`` (less the commonest, past the budget), by the sum
    of each word's ``ts_rank_cd`` (1: divided by 1 + the log of the chunk's length) times its
    idf (``weighted_words``), as (chunk id, rank, file id)."""
    weights = weighted_words(conn, words)
    # Each word's tsquery made once (MATERIALIZED: inlined, it was parsed again for each row).
    terms = (
        "WITH w AS MATERIALIZED (SELECT to_tsquery('simple', t.word) AS q, t.idf "
        "FROM unnest(%s::text[], %s::float8[]) AS t(word, idf)) "
    )
    rank = "(SELECT sum(w.idf * ts_rank_cd(c.tsv, w.q, 1)) FROM w) AS rank"
    params = ([tsquery([word]) for word in weights], list(weights.values()), tsquery(list(weights)))
    if allowed is None:
        # No filter: the chunk's own file, no join (the file a hit names, as for vectors).
        rows = conn.execute(
            f"{terms}SELECT c.id, {rank}, c.file_id "
            "FROM to_tsquery('simple', %s) AS q, kb_chunks c "
            "WHERE c.tsv @@ q AND c.store_id = ANY(%s) ORDER BY rank DESC, c.id LIMIT %s",
            (*params, stores, limit),
        )
    else:
        # A chunk held by several files comes once per file: the filter may allow any of them.
        rows = conn.execute(
            f"{terms}SELECT cf.chunk_id, {rank}, cf.file_id "
            "FROM to_tsquery('simple', %s) AS q, kb_chunks c "
            "JOIN kb_chunk_files cf ON cf.chunk_id = c.id "
            "WHERE c.tsv @@ q AND c.store_id = ANY(%s) AND (cf.store_id, cf.file_id) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[])) "
            "ORDER BY rank DESC, cf.chunk_id LIMIT %s",
            (*params, stores, *_pairs(allowed), limit * 2),
        )
    out: dict[int, tuple[int, float, str]] = {}
    for chunk_id, rank, file_id in rows:
        out.setdefault(int(chunk_id), (int(chunk_id), float(rank), str(file_id)))
    return list(out.values())[:limit]


def _nearest(
    conn: psycopg.Connection[Any],
    stores: list[str],
    vector: npt.NDArray[np.float32],
    allowed: set[tuple[str, str]] | None,
    limit: int,
) -> list[tuple[int, float, str]]:
    """The ``limit`` closest chunks as (chunk id, cosine, file id), through the HNSW index of
    the vector's dimension (written into the statement: a partial index is used only when
    its ``WHERE dims = d`` is in the statement's text)."""
    dims = int(vector.shape[0])
    distance = f"c.embedding::vector({dims}) <=> %s::vector({dims})"
    text = vector_text(np.asarray(vector, dtype=np.float32))
    if allowed is None:
        rows = conn.execute(
            f"SELECT c.id, 1 - ({distance}), c.file_id FROM kb_chunks c "
            f"WHERE c.dims = {dims} AND c.store_id = ANY(%s) ORDER BY {distance} LIMIT %s",
            (text, stores, text, limit),
        )
    else:
        rows = conn.execute(
            f"SELECT c.id, 1 - ({distance}), cf.file_id FROM kb_chunks c "
            "JOIN kb_chunk_files cf ON cf.chunk_id = c.id "
            f"WHERE c.dims = {dims} AND c.store_id = ANY(%s) AND (cf.store_id, cf.file_id) IN "
            f"(SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY {distance} LIMIT %s",
            (text, stores, *_pairs(allowed), text, limit * 2),
        )
    out: dict[int, tuple[int, float, str]] = {}
    for chunk_id, score, file_id in rows:
        out.setdefault(int(chunk_id), (int(chunk_id), float(score), str(file_id)))
    found = sorted(out.values(), key=lambda hit: -hit[1])
    return found[:limit]


def _coverage(conn: psycopg.Connection[Any], words: set[str], ids: list[int]) -> dict[int, float]:
    """The share of the query's words each chunk holds (1.0: all of them)."""
    if not ids or not words:
        return {}
    rows = conn.execute("SELECT id, words FROM kb_chunks WHERE id = ANY(%s)", (ids,))
    return {int(r[0]): len(words.intersection(r[1].split())) / len(words) for r in rows}


def _rows(conn: psycopg.Connection[Any], found: Sequence[tuple[int, str]]) -> dict[int, _Row]:
    """Each found chunk's row, with the file it was found in and that file's attributes."""
    if not found:
        return {}
    file_of = dict(found)
    rows = conn.execute(
        "SELECT c.id, c.store_id, c.text, c.heading, c.start_at, c.end_at, c.embedding::real[], "
        "coalesce(f.attributes, '{}') FROM unnest(%s::bigint[], %s::text[]) AS w(id, file_id) "
        "JOIN kb_chunks c ON c.id = w.id LEFT JOIN kb_index_files f "
        "ON f.store_id = c.store_id AND f.file_id = w.file_id",
        (list(file_of), list(file_of.values())),
    )
    out: dict[int, _Row] = {}
    for chunk_id, store_id, text, heading, start, end, vector, attributes in rows:
        blob = np.asarray(vector, dtype=np.float32).tobytes()
        out[int(chunk_id)] = _Row(
            store_id, file_of[chunk_id], text, heading, int(start), int(end), blob, attributes
        )
    return out
