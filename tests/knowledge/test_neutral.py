"""Language-neutral vectors: what language a text is, the rows the index stores and searches
with, and files and databases written before them converted once, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import psycopg
import pytest

from nobusy.knowledge.chunking import chunk
from nobusy.knowledge.embedder import Embedder
from nobusy.knowledge.index import Index
from nobusy.knowledge.neutral import language, means, neutral
from nobusy.knowledge.pg_index import PgIndex
from nobusy.store.pg_migrations import migrated
from tests.knowledge.test_index import LEAVE, WIRES, _add


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("年假怎么申请", "zh"),
        ("员工请 annual leave 需提前 3 个工作日在 HR system 提交", "zh"),
        ("How many days of 年假 do I get after ten years?", "en"),
        ("Outgoing international wires cost $45 each.", "en"),
        ("有給休暇は何日ですか", None),  # Japanese: no mean measured
        ("12345 — ¥ 500", None),
    ],
)
def test_language(text: str, expected: str | None) -> None:
    assert language(text) == expected


def test_the_shipped_means_move_both_languages_and_keep_rows_unit(embedder: Embedder) -> None:
    assert set(means(embedder.name)) == {"zh", "en"}
    texts = ["年假怎么申请", "How do I apply for annual leave?", "12345"]
    raw = embedder.embed(texts, query=True)
    moved = neutral(embedder.name, texts, raw)
    assert np.allclose(np.linalg.norm(moved, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(moved[0], raw[0]) and not np.allclose(moved[1], raw[1])
    assert np.allclose(moved[2], raw[2])  # neither language: as it was
    # The two languages' versions of one question come closer.
    assert moved[0] @ moved[1] > raw[0] @ raw[1]
    # A model with no measured means is left alone.
    assert np.array_equal(neutral("another-model", texts, raw), raw)


def _stored(path: Path) -> dict[str, np.ndarray]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT text, vector FROM chunks ORDER BY id").fetchall()
    return {text: np.frombuffer(blob, dtype=np.float32) for text, blob in rows}


def test_an_older_sqlite_file_is_converted_once(tmp_path: Path, embedder: Embedder) -> None:
    path = tmp_path / "knowledge.db"
    index = Index(path, embedder.name)
    _add(index, embedder, "vs_a", "leave", LEAVE)
    _add(index, embedder, "vs_a", "wires", WIRES)
    index.close()
    pieces = chunk(LEAVE, size=200, overlap=30) + chunk(WIRES, size=200, overlap=30)
    contexts = {p.text: p.context for p in pieces}
    raw = {p.text: embedder.embed([p.context], query=False)[0] for p in pieces}
    stored = _stored(path)
    for text, vector in stored.items():  # add() stores the neutral rows
        assert np.allclose(
            vector, neutral(embedder.name, [contexts[text]], raw[text][None])[0], atol=1e-5
        )
    # The file as an older nobusy wrote it: the model's own rows, format 0.
    with sqlite3.connect(path) as db:
        db.executemany(
            "UPDATE chunks SET vector = ? WHERE text = ?",
            [(vector.tobytes(), text) for text, vector in raw.items()],
        )
        db.execute("PRAGMA user_version = 0")
    Index(path, embedder.name).close()
    assert all(np.allclose(stored[t], v, atol=1e-5) for t, v in _stored(path).items())
    Index(path, embedder.name).close()  # once: a second open changes nothing
    assert all(np.allclose(stored[t], v, atol=1e-5) for t, v in _stored(path).items())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1


def test_the_postgresql_migration_converts_older_rows(pg_url: str, embedder: Embedder) -> None:
    index = PgIndex(pg_url, embedder.name)
    try:
        _add(index, embedder, "vs_old", "wires", WIRES)  # type: ignore[arg-type]
    finally:
        index.close()
    pieces = chunk(WIRES, size=200, overlap=30)
    raw = embedder.embed([p.context for p in pieces], query=False)
    expected = neutral(embedder.name, [p.context for p in pieces], raw)

    def stored(conn: psycopg.Connection[object]) -> list[np.ndarray]:
        rows = conn.execute(
            "SELECT text, embedding::real[] FROM kb_chunks WHERE store_id = 'vs_old'"
        ).fetchall()
        by_text = {text: np.asarray(v, dtype=np.float32) for text, v in rows}
        return [by_text[p.text] for p in pieces]

    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert all(
            np.allclose(a, b, atol=1e-5) for a, b in zip(stored(conn), expected, strict=True)
        )
        # As an older nobusy left it: the model's own rows, m015 not applied.
        for piece, vector in zip(pieces, raw, strict=True):
            conn.execute(
                "UPDATE kb_chunks SET embedding = %s::vector WHERE store_id = 'vs_old' "
                "AND text = %s",
                ("[" + ",".join(map(repr, vector.tolist())) + "]", piece.text),
            )
        conn.execute("DELETE FROM nobusy_migrations WHERE name = 'm015_neutral_vectors'")
    migrated(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert all(
            np.allclose(a, b, atol=1e-5) for a, b in zip(stored(conn), expected, strict=True)
        )
