"""The search index: chunks, their jieba words (FTS5, BM25) and vectors in one SQLite file.

    chunks       one row per distinct text in a store (sha-256 of the text): offsets, heading,
                 the vector as float32 bytes; a retried upload finds its rows there
    chunk_files  which files hold each chunk (a text shared by two files is stored once, and
                 goes when the last file holding it does)
    files        each file's attributes (JSON), which filters are compiled against
    stores       each store's embedding model: vectors of two models never meet in one store
    chunks_fts   FTS5 over the chunk's heading and text cut into words by jieba

Vectors are stored, and queries searched, language-neutral (``nobusy.knowledge.neutral``): the
index takes the model's own rows and moves them itself; a file written before that is converted
when first opened (``PRAGMA user_version``). Search runs BM25 and vector search each to a
candidate list and fuses them by reciprocal rank (RRF, k=60: Cormack et al. 2009), optionally
re-ordered for diversity by maximal marginal relevance. BM25 leaves out a query's commonest
words when scoring them would cost more than ``POSTINGS_BUDGET`` rows. Vectors are searched by
matrix products over each store's vectors held in memory, in k-means partitions when there are
many (``nobusy.knowledge.vectors``). One connection, one lock: safe for a process's threads;
another process's writes to the file are noticed by SQLite's ``data_version``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from nobusy.errors import InvalidRequest, StorageUnavailable
from nobusy.knowledge.chunking import Chunk
from nobusy.knowledge.filters import compile_filter
from nobusy.knowledge.neutral import neutral
from nobusy.knowledge.scoring import relevance
from nobusy.knowledge.segment import Segmenter, segmenter
from nobusy.knowledge.vectors import StoreVectors

__all__ = ["INDEX_FILE", "MODES", "Hit", "Index", "within_budget"]

MODES = ("hybrid", "bm25", "vector")
INDEX_FILE = "knowledge.db"  # under data_dir: every store of the process in one file
RRF_K = 60
BM25_WEIGHT = 1.0
COVERAGE_POWER = 3.0
# Chunk rows BM25 may score for one query (``Index._searched_words``); at 100,000 chunks a
# row costs ~1 µs of FTS5's time.
POSTINGS_BUDGET = 4_000
_WORD_COUNTS_KEPT = 50_000
# The file's format (PRAGMA user_version): 1, vectors stored language-neutral (``_upgrade``).
_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS stores (
    store_id TEXT PRIMARY KEY, embedder TEXT NOT NULL, dimensions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    store_id TEXT NOT NULL, file_id TEXT NOT NULL, attributes TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (store_id, file_id));
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, store_id TEXT NOT NULL, file_id TEXT NOT NULL, hash TEXT NOT NULL,
    text TEXT NOT NULL, heading TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
    vector BLOB NOT NULL, UNIQUE (store_id, hash));
CREATE TABLE IF NOT EXISTS chunk_files (
    chunk_id INTEGER NOT NULL, store_id TEXT NOT NULL, file_id TEXT NOT NULL,
    PRIMARY KEY (chunk_id, file_id));
CREATE INDEX IF NOT EXISTS chunk_files_file ON chunk_files (store_id, file_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    words, tokenize = 'porter unicode61 remove_diacritics 2');
"""
# query_terms must tokenize as chunks_fts does: it tells how chunks_fts indexed a query's words.
_QUERY_TABLES = """
CREATE VIRTUAL TABLE IF NOT EXISTS temp.chunks_vocab USING fts5vocab(main, chunks_fts, row);
CREATE VIRTUAL TABLE IF NOT EXISTS temp.query_terms USING fts5(
    words, tokenize = 'porter unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE IF NOT EXISTS temp.query_terms_instance USING fts5vocab(
    temp, query_terms, instance);
"""


@dataclass(frozen=True)
class Hit:
    """One chunk found: where it is, its text, its score and the scores it was fused from."""

    store_id: str
    file_id: str
    chunk_id: int
    text: str
    start: int
    end: int
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    attributes: dict[str, object] = field(default_factory=dict)
    heading: str = ""


class _Row(NamedTuple):
    store_id: str
    file_id: str
    text: str
    heading: str
    start: int
    end: int
    vector: bytes
    attributes: str


class Index:
    """Every store's chunks in one SQLite file, searched by words, by meaning, or both."""

    def __init__(self, path: Path, embedder_name: str, *, dictionary: Path | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.embedder_name = embedder_name
        self._segmenter: Segmenter = segmenter(dictionary)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        _upgrade(self._db)
        # Connection-only tables (nothing in the file): each word's chunk count, and the
        # table's tokenizer applied to a query's words (``_document_counts``).
        self._db.executescript(_QUERY_TABLES)
        self._vectors: dict[str, StoreVectors] = {}
        # Chunk counts of words searched for, until the next write changes them.
        self._word_counts: dict[str, int] = {}
        # Stores whose vectors in memory may be behind the file (``_changed``), and the file's
        # data_version, which changes when another connection (a process) commits.
        self._unverified: set[str] = set()
        self._data_version: int | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                self._changed()
            except sqlite3.OperationalError as exc:
                raise StorageUnavailable(f"knowledge index {self.path}: {exc}") from exc

    def _changed(self) -> None:
        """The file changed (a write here or in another process): what is kept from it is
        checked again before it is used."""
        self._word_counts.clear()
        self._unverified.update(self._vectors)

    def _check_version(self) -> None:
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            self._data_version = version
            self._changed()

    def add(
        self,
        store_id: str,
        file_id: str,
        chunks: Sequence[Chunk],
        vectors: npt.NDArray[np.float32],
        attributes: Mapping[str, object],
    ) -> int:
        """Add a file's chunks and their vectors (the model's own, of each ``Chunk.context``);
        return how many were new to the store."""
        if len(chunks) != len(vectors):
            raise ValueError("Index.add: one vector per chunk")
        vectors = neutral(self.embedder_name, [c.context for c in chunks], vectors)
        # Segmenting is the slow part of adding: done before the write lock is taken.
        words = [" ".join(self._segmenter.words(c.context)) for c in chunks]
        added = 0
        with self._write() as db:
            self._claim_store(db, store_id, vectors.shape[1] if len(vectors) else None)
            db.execute(
                "INSERT INTO files (store_id, file_id, attributes) VALUES (?, ?, ?) "
                "ON CONFLICT DO UPDATE SET attributes = excluded.attributes",
                (store_id, file_id, json.dumps(dict(attributes), ensure_ascii=False)),
            )
            for piece, vector, text_words in zip(chunks, vectors, words, strict=True):
                digest = _digest(piece.text)
                cursor = db.execute(
                    "INSERT INTO chunks (store_id, file_id, hash, text, heading, start, end, "
                    "vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (
                        store_id,
                        file_id,
                        digest,
                        piece.text,
                        piece.heading,
                        piece.start,
                        piece.end,
                        vector.tobytes(),
                    ),
                )
                if cursor.rowcount:
                    chunk_id = cursor.lastrowid
                    db.execute(
                        "INSERT INTO chunks_fts (rowid, words) VALUES (?, ?)",
                        (chunk_id, text_words),
                    )
                    added += 1
                else:
                    row = db.execute(
                        "SELECT id FROM chunks WHERE store_id = ? AND hash = ?", (store_id, digest)
                    ).fetchone()
                    chunk_id = row[0]
                db.execute(
                    "INSERT OR IGNORE INTO chunk_files VALUES (?, ?, ?)",
                    (chunk_id, store_id, file_id),
                )
        return added

    def set_attributes(self, store_id: str, file_id: str, attributes: Mapping[str, object]) -> None:
        """Change the attributes a file's chunks are filtered by (a file not indexed yet gets
        them when it is)."""
        with self._write() as db:
            db.execute(
                "UPDATE files SET attributes = ? WHERE store_id = ? AND file_id = ?",
                (json.dumps(dict(attributes), ensure_ascii=False), store_id, file_id),
            )

    def known(self, store_id: str, chunks: Sequence[Chunk]) -> list[bool]:
        """Which of ``chunks`` the store holds already: their vectors need not be computed."""
        digests = [_digest(piece.text) for piece in chunks]
        found: set[str] = set()
        with self._lock:
            for first in range(0, len(digests), 500):  # under SQLite's bound-parameter limit
                part = digests[first : first + 500]
                marks = ",".join("?" * len(part))
                found.update(
                    row[0]
                    for row in self._db.execute(
                        f"SELECT hash FROM chunks WHERE store_id = ? AND hash IN ({marks})",
                        (store_id, *part),
                    )
                )
        return [digest in found for digest in digests]

    def _claim_store(self, db: sqlite3.Connection, store_id: str, dims: int | None) -> None:
        row = db.execute(
            "SELECT embedder, dimensions FROM stores WHERE store_id = ?", (store_id,)
        ).fetchone()
        if row is None:
            if dims is not None:
                db.execute(
                    "INSERT INTO stores VALUES (?, ?, ?)", (store_id, self.embedder_name, dims)
                )
            return
        if row[0] != self.embedder_name or (dims is not None and dims != row[1]):
            raise InvalidRequest(
                f"vector store {store_id} holds vectors of {row[0]} ({row[1]} dimensions); "
                f"it cannot take vectors of {self.embedder_name}",
                code="embedding_model_mismatch",
            )

    def store_embedder(self, store_id: str) -> str | None:
        """The embedding model a store's vectors come from (None: it has none yet)."""
        with self._lock:
            row = self._db.execute(
                "SELECT embedder FROM stores WHERE store_id = ?", (store_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def remove_file(self, store_id: str, file_id: str) -> int:
        """Remove a file from a store; return how many chunks went with it (shared ones stay)."""
        with self._write() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT chunk_id FROM chunk_files WHERE store_id = ? AND file_id = ?",
                    (store_id, file_id),
                )
            ]
            db.execute(
                "DELETE FROM chunk_files WHERE store_id = ? AND file_id = ?", (store_id, file_id)
            )
            db.execute("DELETE FROM files WHERE store_id = ? AND file_id = ?", (store_id, file_id))
            removed = 0
            for chunk_id in ids:
                other = db.execute(
                    "SELECT file_id FROM chunk_files WHERE chunk_id = ? LIMIT 1", (chunk_id,)
                ).fetchone()
                if other is None:
                    db.execute("DELETE FROM chunks WHERE id = ?", (chunk_id,))
                    db.execute("DELETE FROM chunks_fts WHERE rowid = ?", (chunk_id,))
                    removed += 1
                else:
                    db.execute("UPDATE chunks SET file_id = ? WHERE id = ?", (other[0], chunk_id))
            self._vectors.pop(store_id, None)
        return removed

    def remove_store(self, store_id: str) -> None:
        """Remove a store and everything in it."""
        with self._write() as db:
            db.execute(
                "DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE store_id = ?)",
                (store_id,),
            )
            for table in ("chunks", "chunk_files", "files", "stores"):
                db.execute(f"DELETE FROM {table} WHERE store_id = ?", (store_id,))
            self._vectors.pop(store_id, None)

    def count(self, store_id: str) -> int:
        """How many distinct chunks a store holds."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM chunks WHERE store_id = ?", (store_id,)
            ).fetchone()
        return int(row[0])

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
        """The ``k`` chunks of ``store_ids`` that best answer ``query``, best first.

        ``mode``: ``hybrid`` fuses BM25 and vector ranks (BM25 alone when ``vector`` is None),
        ``bm25`` or ``vector`` use one. ``score_threshold`` drops hits whose ``score`` (the
        calibrated relevance in [0, 1]) is lower; ``diversity`` > 0 re-orders by MMR."""
        if mode not in MODES:
            raise InvalidRequest(f"search mode must be one of {', '.join(MODES)}", param="mode")
        if not store_ids or k <= 0:
            return []
        pool = max(candidates, k)
        if vector is not None:
            vector = neutral(self.embedder_name, [query], np.atleast_2d(vector))[0]
        with self._lock:
            self._check_version()
            allowed = self._allowed_files(store_ids, filters)
            keyword: list[tuple[int, float, str]] = []
            semantic: list[tuple[int, float, str]] = []
            if mode in ("hybrid", "bm25"):
                keyword = self._bm25(store_ids, query, allowed, pool)
            if mode in ("hybrid", "vector") and vector is not None:
                semantic = self._nearest(store_ids, vector, allowed, pool)
            coverage = self._coverage(query, [chunk_id for chunk_id, _, _ in keyword])
            return _ranked(
                self.embedder_name,
                keyword,
                semantic,
                coverage,
                self._rows,
                vector,
                k=k,
                wanted=pool if diversity > 0 and vector is not None else k,
                score_threshold=score_threshold,
                diversity=diversity,
            )

    def _allowed_files(
        self, store_ids: Sequence[str], filters: Mapping[str, object] | None
    ) -> set[tuple[str, str]] | None:
        if not filters:
            return None
        sql, params = compile_filter(filters)
        marks = ",".join("?" for _ in store_ids)
        rows = self._db.execute(
            f"SELECT store_id, file_id FROM files WHERE store_id IN ({marks}) AND {sql}",
            [*store_ids, *params],
        )
        return {(r[0], r[1]) for r in rows}

    def _bm25(
        self,
        store_ids: Sequence[str],
        query: str,
        allowed: set[tuple[str, str]] | None,
        limit: int,
    ) -> list[tuple[int, float, str]]:
        words = self._searched_words(self._segmenter.query_words(query))
        if not words or allowed == set():
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        # FTS5 alone picks the best rows (a top-n sort in C); joining chunk_files in the same
        # statement looked up every match's files first (~40% of the time at 100,000 chunks).
        # The file holds every store, so the best of others' rows may fill the first page:
        # then it asks again for all of them.
        out: dict[int, tuple[int, float, str]] = {}
        fetch: int | None = limit * 2
        while True:
            ranked = self._db.execute(
                "SELECT rowid, -rank FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank "
                "LIMIT ?",
                (match, -1 if fetch is None else fetch),
            ).fetchall()
            files = self._files_of([r[0] for r in ranked], store_ids, allowed)
            for chunk_id, score in ranked:
                file_id = files.get(chunk_id)
                if file_id is not None and chunk_id not in out:
                    out[chunk_id] = (int(chunk_id), float(score), file_id)
                    if len(out) >= limit:
                        return list(out.values())
            if fetch is None or len(ranked) < fetch:
                return list(out.values())
            fetch = None

    def _searched_words(self, words: list[str]) -> list[str]:
        """The query's words BM25 searches for: the rarer ones, up to ``POSTINGS_BUDGET`` rows.

        Scoring a word costs a row per chunk holding it, and a word in a large share of the
        chunks adds little to BM25 (its idf is near 0) but every one of its rows: at 100,000
        chunks such words were most of the search's time. So when the words' chunk counts add
        up past the budget, the commonest are left out (the rarest always stays); coverage
        (``_coverage``) still counts every word of the query."""
        if len(words) <= 1:
            return words
        return within_budget(words, self._document_counts(words), POSTINGS_BUDGET)

    def _document_counts(self, words: Sequence[str]) -> dict[str, int]:
        """How many chunks (of every store) hold each word, as FTS5 indexed it (stemmed)."""
        unknown = [w for w in dict.fromkeys(words) if w not in self._word_counts]
        if unknown:
            # The table's own tokenizer stems the words (porter: "loans" is indexed as
            # "loan"): a temporary FTS5 table with the same tokenizer, a row a word, says how.
            db = self._db
            db.execute("DELETE FROM temp.query_terms")
            db.executemany(
                "INSERT INTO temp.query_terms (rowid, words) VALUES (?, ?)", enumerate(unknown)
            )
            counts = dict.fromkeys(unknown, 0)
            # A word FTS5 cuts in two ("3.5") is searched as a phrase: its terms' rows count.
            for row, doc in db.execute(
                "SELECT qt.doc, v.doc FROM temp.query_terms_instance qt "
                "JOIN temp.chunks_vocab v ON v.term = qt.term"
            ):
                counts[unknown[row]] += int(doc)
            if len(self._word_counts) > _WORD_COUNTS_KEPT:
                self._word_counts.clear()
            self._word_counts.update(counts)
        return {w: self._word_counts[w] for w in words}

    def _files_of(
        self, ids: Sequence[int], store_ids: Sequence[str], allowed: set[tuple[str, str]] | None
    ) -> dict[int, str]:
        """The file each of ``ids`` is found in within ``store_ids`` (one the filter allows)."""
        out: dict[int, str] = {}
        stores = set(store_ids)
        for first in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
            part = ids[first : first + 500]
            # Stores are checked here: a store_id condition in SQL had SQLite walk the store's
            # whole (store_id, file_id) index instead of looking the ids up.
            rows = self._db.execute(
                "SELECT chunk_id, store_id, file_id FROM chunk_files WHERE chunk_id IN "
                f"({','.join('?' * len(part))})",
                part,
            )
            for chunk_id, store_id, file_id in rows:
                if store_id in stores and (allowed is None or (store_id, file_id) in allowed):
                    out.setdefault(chunk_id, file_id)
        return out

    def _coverage(self, query: str, ids: Sequence[int]) -> dict[int, float]:
        """The share of the query's words each chunk holds (1.0: all of them)."""
        words = set(self._segmenter.query_words(query))
        if not ids or not words:
            return {}
        marks = ",".join("?" for _ in ids)
        rows = self._db.execute(
            f"SELECT rowid, words FROM chunks_fts WHERE rowid IN ({marks})", list(ids)
        )
        return {int(r[0]): len(words.intersection(r[1].split())) / len(words) for r in rows}

    def _nearest(
        self,
        store_ids: Sequence[str],
        vector: npt.NDArray[np.float32],
        allowed: set[tuple[str, str]] | None,
        limit: int,
    ) -> list[tuple[int, float, str]]:
        if allowed == set():
            return []
        found: list[tuple[int, float, str]] = []
        for store_id in store_ids:
            vectors = self._vectors.get(store_id)
            if vectors is None:
                vectors = StoreVectors.load(self._db, store_id)
            elif store_id in self._unverified:
                # A file added while the store is searched costs its own rows, not a reload.
                vectors = vectors.refreshed(self._db, store_id)
            self._vectors[store_id] = vectors
            self._unverified.discard(store_id)
            found.extend(vectors.nearest(np.asarray(vector, dtype=np.float32), limit, allowed))
        found.sort(key=lambda hit: -hit[1])
        return found[:limit]

    def _rows(self, found: Sequence[tuple[int, str]]) -> dict[int, _Row]:
        """Each found chunk's row, with the file it was found in and that file's attributes."""
        if not found:
            return {}
        file_of = dict((chunk_id, file_id) for chunk_id, file_id in found)
        marks = ",".join("?" for _ in file_of)
        rows = self._db.execute(
            "SELECT id, store_id, text, heading, start, end, vector FROM chunks "
            f"WHERE id IN ({marks})",
            list(file_of),
        ).fetchall()
        # The attributes of the file each chunk was found in (a filter chose that one), in one
        # statement for all of them.
        pairs = {(r[1], file_of[r[0]]) for r in rows}
        attributes: dict[tuple[str, str], str] = {}
        if pairs:
            attributes = {
                (r[0], r[1]): r[2]
                for r in self._db.execute(
                    "SELECT store_id, file_id, attributes FROM files WHERE (store_id, file_id) "
                    f"IN (VALUES {','.join('(?, ?)' for _ in pairs)})",
                    [part for pair in pairs for part in pair],
                )
            }
        return {
            int(chunk_id): _Row(
                store_id,
                file_of[chunk_id],
                text,
                heading,
                start,
                end,
                blob,
                attributes.get((store_id, file_of[chunk_id]), "{}"),
            )
            for chunk_id, store_id, text, heading, start, end, blob in rows
        }


def _ranked(
    embedder_name: str,
    keyword: list[tuple[int, float, str]],
    semantic: list[tuple[int, float, str]],
    coverage: Mapping[int, float],
    fetch: Callable[[list[tuple[int, str]]], dict[int, _Row]],
    vector: npt.NDArray[np.float32] | None,
    *,
    k: int,
    wanted: int,
    score_threshold: float,
    diversity: float,
) -> list[Hit]:
    """The ``k`` best hits of both rankings fused, the rows read by ``fetch`` only for the
    hits returned (MMR chooses among ``wanted``), a batch at a time while the threshold drops
    some: the part of a search SQLite and PostgreSQL (``pg_index``) share."""
    fused = _fuse(keyword, semantic, coverage)
    bm25 = {chunk_id: score for chunk_id, score, _ in keyword}
    cosine = {chunk_id: score for chunk_id, score, _ in semantic}
    hits: list[Hit] = []
    rows: dict[int, _Row] = {}
    at = 0
    while len(hits) < wanted and at < len(fused):
        batch = fused[at : at + max(wanted - len(hits), 8)]
        at += len(batch)
        found = fetch([(chunk_id, file_id) for chunk_id, _, file_id in batch])
        rows.update(found)
        for chunk_id, rrf, _ in batch:
            row = found.get(chunk_id)
            if row is None:
                continue
            hit = _hit(embedder_name, chunk_id, row, rrf, bm25, cosine, coverage, vector)
            if hit.score >= score_threshold:
                hits.append(hit)
    if diversity > 0 and vector is not None:
        hits = _mmr(hits, rows, vector, k, 1.0 - diversity)
    return hits[:k]


def _hit(
    embedder_name: str,
    chunk_id: int,
    row: _Row,
    rrf: float,
    bm25: Mapping[int, float],
    cosine: Mapping[int, float],
    coverage: Mapping[int, float],
    vector: npt.NDArray[np.float32] | None,
) -> Hit:
    chunk_cosine = cosine.get(chunk_id)
    if chunk_cosine is None and vector is not None:
        chunk_cosine = float(np.frombuffer(row.vector, dtype=np.float32) @ vector)
    scores = {"rrf": rrf}
    if chunk_id in bm25:
        scores["bm25"] = bm25[chunk_id]
        scores["coverage"] = coverage.get(chunk_id, 0.0)
    if chunk_cosine is not None:
        scores["vector"] = chunk_cosine
    score = relevance(embedder_name, chunk_cosine, coverage.get(chunk_id))
    scores["relevance"] = score
    return Hit(
        row.store_id, row.file_id, chunk_id, row.text, row.start, row.end, score, scores,
        json.loads(row.attributes), row.heading,
    )  # fmt: skip


def within_budget(words: Sequence[str], counts: Mapping[str, int], budget: int) -> list[str]:
    """The rarest of ``words`` and then the next rarest while their chunk ``counts`` add up to
    at most ``budget``, in the query's order (PostgreSQL's keyword search keeps the same)."""
    if sum(counts.get(w, 0) for w in words) <= budget:
        return list(words)
    rarest = sorted(words, key=lambda w: counts.get(w, 0))
    kept, total = {rarest[0]}, counts.get(rarest[0], 0)
    for word in rarest[1:]:
        total += counts.get(word, 0)
        if total > budget:
            break
        kept.add(word)
    return [w for w in words if w in kept]


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring a file written by an older nobusy to ``_VERSION``: 1 made the stored vectors
    language-neutral (``nobusy.knowledge.neutral``), as ``add`` now writes them."""
    if int(db.execute("PRAGMA user_version").fetchone()[0]) >= _VERSION:
        return
    # Another process may be converting the same file: it holds the write lock meanwhile.
    db.execute("PRAGMA busy_timeout=600000")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            if int(db.execute("PRAGMA user_version").fetchone()[0]) < 1:
                stores = db.execute("SELECT store_id, embedder FROM stores").fetchall()
                for store_id, model in stores:
                    _neutralise(db, store_id, model)
            db.execute(f"PRAGMA user_version = {_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.execute("PRAGMA busy_timeout=5000")


def _neutralise(db: sqlite3.Connection, store_id: str, model: str) -> None:
    rows = db.execute(
        "SELECT id, text, heading, start, end, vector FROM chunks WHERE store_id = ?", (store_id,)
    ).fetchall()
    if not rows:
        return
    contexts = [
        Chunk(text, start, end, heading).context for _, text, heading, start, end, _ in rows
    ]
    new = neutral(model, contexts, np.stack([np.frombuffer(r[5], dtype=np.float32) for r in rows]))
    db.executemany(
        "UPDATE chunks SET vector = ? WHERE id = ?",
        ((vector.tobytes(), row[0]) for vector, row in zip(new, rows, strict=True)),
    )


def _digest(text: str) -> str:
    # Whitespace differences (a re-exported file, CRLF) are the same passage.
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def _fuse(
    keyword: list[tuple[int, float, str]],
    semantic: list[tuple[int, float, str]],
    coverage: Mapping[int, float],
) -> list[tuple[int, float, str]]:
    """Reciprocal rank fusion: each list gives 1 / (60 + rank) to each of its items.

    A keyword hit's share is weighted by how much of the query it holds: a question asked in
    English over Chinese passages matches a few stray words, and plain RRF would rank those
    chance matches level with the passages the vectors found (measured: bench knowledge)."""
    total: dict[int, float] = {}
    file_of: dict[int, str] = {}
    for rank, (chunk_id, _, file_id) in enumerate(keyword, start=1):
        weight = BM25_WEIGHT * coverage.get(chunk_id, 1.0) ** COVERAGE_POWER
        total[chunk_id] = total.get(chunk_id, 0.0) + weight / (RRF_K + rank)
        file_of.setdefault(chunk_id, file_id)
    for rank, (chunk_id, _, file_id) in enumerate(semantic, start=1):
        total[chunk_id] = total.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
        file_of.setdefault(chunk_id, file_id)
    best = sorted(total.items(), key=lambda pair: -pair[1])
    return [(chunk_id, score, file_of[chunk_id]) for chunk_id, score in best]


def _mmr(
    hits: list[Hit],
    rows: Mapping[int, _Row],
    query: npt.NDArray[np.float32],
    k: int,
    weight: float,
) -> list[Hit]:
    """Maximal marginal relevance: each next hit is relevant and unlike those already taken."""
    if len(hits) <= 1:
        return hits
    matrix = np.stack([np.frombuffer(rows[h.chunk_id].vector, dtype=np.float32) for h in hits])
    relevance_to_query = matrix @ query
    similarity = matrix @ matrix.T
    chosen: list[int] = []
    left = list(range(len(hits)))
    while left and len(chosen) < k:

        def gain(i: int) -> float:
            redundancy = max((float(similarity[i, j]) for j in chosen), default=0.0)
            return weight * float(relevance_to_query[i]) - (1 - weight) * redundancy

        best = max(left, key=gain)
        chosen.append(best)
        left.remove(best)
    return [hits[i] for i in chosen]
