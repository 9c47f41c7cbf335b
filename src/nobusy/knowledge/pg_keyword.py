"""The words of a query PostgreSQL's keyword search ranks by: the rarer ones, within a budget.

``ts_rank_cd`` reads and ranks every chunk that holds any searched word, and a common word is
held by most chunks: at 100,000 chunks such words made hybrid search's p95 a second. As in
SQLite's index (``Index._searched_words``), when the words' chunk counts add up past
``POSTINGS_BUDGET`` the commonest are left out of the ranked query; the rarest always stays,
and coverage still counts every word of the query. The counts are ``kb_word_chunks``'s
(migration ``m016_knowledge_word_counts``): kept by triggers on ``kb_chunks`` in the writing
statement's own transaction, so every replica's writes count at once. They are every store's,
as a word's cost is: one GIN index holds every store's chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

__all__ = ["POSTINGS_BUDGET", "searched_words", "tsquery", "within_budget"]

# Chunk rows the keyword search may rank for one query: at 100,000 chunks a row costs
# ~5 µs of PostgreSQL's time (read from the heap, matched, ranked).
POSTINGS_BUDGET = 4_000


def searched_words(conn: psycopg.Connection[Any], words: Sequence[str]) -> list[str]:
    """``words`` less the commonest, when ranking them all would cost past the budget."""
    if len(words) <= 1:
        return list(words)
    return within_budget(words, _chunk_counts(conn, words), POSTINGS_BUDGET)


def within_budget(words: Sequence[str], counts: Mapping[str, int], budget: int) -> list[str]:
    """The rarest of ``words`` and then the next rarest while their counts add up to at most
    ``budget``, in the query's order."""
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


def _chunk_counts(conn: psycopg.Connection[Any], words: Sequence[str]) -> dict[str, int]:
    """How many chunks hold each word. A word the 'simple' parser cuts in two ("3.5") is
    searched as a phrase, whose terms' rows are all read: their counts add up."""
    rows = conn.execute(
        "SELECT q.word, sum(k.chunks) FROM unnest(%s::text[]) AS q(word) CROSS JOIN LATERAL "
        "unnest(tsvector_to_array(to_tsvector('simple', q.word))) AS t(lexeme) "
        "JOIN kb_word_chunks k ON k.word = t.lexeme GROUP BY q.word",
        (list(words),),
    )
    return {str(word): int(count) for word, count in rows}


def tsquery(words: Sequence[str]) -> str:
    """``to_tsquery`` text matching any of ``words``, each quoted as a whole."""
    return " | ".join("'" + w.replace("\\", "\\\\").replace("'", "''") + "'" for w in words)
