"""The words of a query PostgreSQL's keyword search ranks by, and their weights.

``ts_rank_cd`` reads and ranks every chunk that holds any searched word, and a common word is
held by most chunks: at 100,000 chunks such words made hybrid search's p95 a second. As in
SQLite's index (``Index._searched_words``), when the words' chunk counts add up past
``POSTINGS_BUDGET`` the commonest are left out of the ranked query; the rarest always stays,
and coverage still counts every word of the query. ``ts_rank_cd`` has no inverse document
frequency either (a common word counted as much as a rare one), so each word's rank is
weighted by BM25's idf of it. The counts are ``kb_word_chunks``'s (migration
``m016_knowledge_word_counts``): kept by triggers on ``kb_chunks`` in the writing statement's
own transaction, so every replica's writes count at once. They are every store's, as a word's
cost is (one GIN index holds every store's chunks), and as FTS5's idf is in SQLite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import psycopg

from nobusy.knowledge.index import within_budget

__all__ = ["POSTINGS_BUDGET", "tsquery", "weighted_words", "within_budget"]

# Chunk rows the keyword search may rank for one query: at 100,000 chunks a row costs
# ~7 µs of PostgreSQL's time (read from the heap, matched, ranked for each word).
POSTINGS_BUDGET = 4_000


def weighted_words(conn: psycopg.Connection[Any], words: Sequence[str]) -> dict[str, float]:
    """The words of ``words`` to rank by (less the commonest, when ranking them all would cost
    past the budget), each with its inverse document frequency, in the query's order."""
    if len(words) <= 1:
        return dict.fromkeys(words, 1.0)  # one word: its weight changes no order
    counts = _chunk_counts(conn, words)
    total = counts.pop("", 0)
    return {w: _idf(counts.get(w, 0), total) for w in within_budget(words, counts, POSTINGS_BUDGET)}


def _idf(count: int, total: int) -> float:
    # BM25's (Lucene's form, never negative: a word most chunks hold still weighs a little).
    return math.log(1 + (total - count + 0.5) / (count + 0.5))


def _chunk_counts(conn: psycopg.Connection[Any], words: Sequence[str]) -> dict[str, int]:
    """How many chunks hold each word, and under '' how many chunks there are. A word the
    'simple' parser cuts in two ("3.5") is searched as a phrase, whose terms' rows are all
    read: their counts add up."""
    rows = conn.execute(
        "SELECT q.word, sum(k.chunks) FROM unnest(%s::text[]) AS q(word) CROSS JOIN LATERAL "
        "unnest(tsvector_to_array(to_tsvector('simple', q.word))) AS t(lexeme) "
        "JOIN kb_word_chunks k ON k.word = t.lexeme GROUP BY q.word "
        "UNION ALL SELECT '', chunks FROM kb_word_chunks WHERE word = ''",
        ([w for w in words if w],),
    )
    return {str(word): int(count) for word, count in rows}


def tsquery(words: Sequence[str]) -> str:
    """``to_tsquery`` text matching any of ``words``, each quoted as a whole."""
    return " | ".join("'" + w.replace("\\", "\\\\").replace("'", "''") + "'" for w in words)
