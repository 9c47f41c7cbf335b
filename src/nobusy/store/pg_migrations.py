"""The PostgreSQL step of every migration in ``nobusy.store.migrations``, and how they apply.

There is one list of migrations: ``NOBUSY`` and ``AUDIT`` there, named and ordered. Each
migration has its SQLite step there (a decorated function) and its PostgreSQL step here, under
the same name (``tests/store/test_pg_migrations.py`` checks that none is missing). ``migrate``
applies the pending ones in the list's order and records each name in ``nobusy_migrations``
(the columns of sqlite-utils' ``_sqlite_migrations``), forward-only, all in one transaction
under an advisory lock: replicas starting together wait for the first, then find nothing to do.

The tables are SQLite's, column for column, with PostgreSQL's types where they differ (BIGINT
for counts, DOUBLE PRECISION, BYTEA, BOOLEAN). Timestamps stay UTC text in the SQLite form,
as the shared code writes and parses them (and the audit chain hashes them). Additions: the
keys' ``seq`` (SQLite's rowid: creation order), usage's ``record_id`` and audit's
``event_id``, unique, so rows replayed from a spill file are never stored twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlite_utils.migrations import Migrations

from nobusy.store.migrations import (
    _GROUP_KEYS,
    _KNOWLEDGE_CLAIMS,
    _MONEY_KEYS,
    _MONEY_USAGE,
    AUDIT,
    CONSOLE_TABLES,
    KEY_GROUP_TABLES,
    KNOWLEDGE_TABLES,
    NOBUSY,
    USAGE_DAILY_BACKFILL,
    USAGE_DAILY_INSERT,
)
from nobusy.store.postgres import ERRORS, Link, startup_error, vector_text

__all__ = ["STEPS", "applied", "migrate", "migrated"]

TABLE = "nobusy_migrations"

_KEYS = """
    CREATE TABLE keys (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        priority TEXT NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
        rpm BIGINT,
        tpm BIGINT,
        max_concurrency BIGINT,
        quota_tokens BIGINT,
        balance BIGINT,
        models TEXT,
        max_wait DOUBLE PRECISION,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT,
        last_used_at TEXT
    )"""

_USAGE = """
    CREATE TABLE usage (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        record_id TEXT NOT NULL UNIQUE,
        time TEXT NOT NULL,
        request_id TEXT NOT NULL,
        key_id TEXT REFERENCES keys(id),
        alias TEXT NOT NULL,
        upstream TEXT,
        tried TEXT NOT NULL DEFAULT '[]',
        stream BOOLEAN NOT NULL DEFAULT false,
        outcome TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL DEFAULT 0,
        completion_tokens BIGINT NOT NULL DEFAULT 0,
        ttft_ms DOUBLE PRECISION,
        queue_ms DOUBLE PRECISION,
        duration_ms DOUBLE PRECISION,
        overflow BOOLEAN NOT NULL DEFAULT false
    )"""

_AUDIT = """
    CREATE TABLE audit (
        id BIGINT PRIMARY KEY, time TEXT NOT NULL, request_id TEXT NOT NULL, key_id TEXT,
        alias TEXT, upstream TEXT, event TEXT NOT NULL, content BYTEA, content_hash TEXT,
        prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL, event_id TEXT UNIQUE
    )"""

# Guards against mistakes, as SQLite's triggers do; prune sets nobusy.pruning for its delete.
_AUDIT_GUARD = """
    CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND current_setting('nobusy.pruning', true) = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit rows are append-only: use prune';
    END $$"""

_USAGE_DAILY_FUNCTION = f"""
    CREATE FUNCTION usage_daily_add() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        {USAGE_DAILY_INSERT};
        RETURN NULL;
    END $$"""


# pgvector must be installed on the server: said plainly at start when it is not.
_PGVECTOR = """
    DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') THEN
            IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
                RAISE EXCEPTION 'the pgvector extension is not installed on this server; '
                    'nobusy keeps the knowledge base''s vectors in it: '
                    'https://github.com/pgvector/pgvector'
                    USING ERRCODE = 'feature_not_supported';
            END IF;
            CREATE EXTENSION vector;
        END IF;
    END $$"""

_KNOWLEDGE_SHARED = (
    _PGVECTOR,
    "CREATE TABLE kb_blobs (file_id TEXT NOT NULL, part BIGINT NOT NULL, content BYTEA NOT "
    "NULL, PRIMARY KEY (file_id, part))",
    "CREATE TABLE kb_index_stores (store_id TEXT PRIMARY KEY, embedder TEXT NOT NULL, "
    "dimensions BIGINT NOT NULL)",
    "CREATE TABLE kb_index_files (store_id TEXT NOT NULL, file_id TEXT NOT NULL, "
    "attributes TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (store_id, file_id))",
    "CREATE TABLE kb_chunks (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "store_id TEXT NOT NULL, file_id TEXT NOT NULL, hash TEXT NOT NULL, text TEXT NOT NULL, "
    "heading TEXT NOT NULL, start_at BIGINT NOT NULL, end_at BIGINT NOT NULL, "
    "words TEXT NOT NULL, "
    "tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, words)) STORED, "
    "dims INTEGER NOT NULL, embedding vector NOT NULL, UNIQUE (store_id, hash))",
    "CREATE INDEX kb_chunks_tsv ON kb_chunks USING gin (tsv)",
    *(
        f"CREATE INDEX kb_chunks_hnsw_{d} ON kb_chunks USING hnsw "
        f"((embedding::vector({d})) vector_cosine_ops) WHERE dims = {d}"
        for d in (384, 512)
    ),
    "CREATE TABLE kb_chunk_files (chunk_id BIGINT NOT NULL, store_id TEXT NOT NULL, "
    "file_id TEXT NOT NULL, PRIMARY KEY (chunk_id, file_id))",
    "CREATE INDEX kb_chunk_files_file ON kb_chunk_files (store_id, file_id)",
)

# Each word of a statement's rows once a chunk, and '' once a chunk: the chunks' total, which a
# word's inverse document frequency is taken against ('' is no word of any tsvector).
_WORDS_OF = (
    "(SELECT unnest(tsvector_to_array(tsv)) FROM {rows} UNION ALL SELECT '' FROM {rows}) AS t(w)"
)
# Counted a word at a time and applied in the words' order: concurrent writers lock the rows
# they share in one order, so they wait for each other but never deadlock. A delete
# subtracts; a word no chunk holds any more goes.
_WORD_COUNT_UPSERT = (
    "INSERT INTO kb_word_chunks (word, chunks) SELECT w, {sign} count(*) FROM "
    + _WORDS_OF
    + " GROUP BY w ORDER BY w "
    "ON CONFLICT (word) DO UPDATE SET chunks = kb_word_chunks.chunks + excluded.chunks"
)
_KNOWLEDGE_WORD_COUNTS = (
    "CREATE TABLE kb_word_chunks (word TEXT PRIMARY KEY, chunks BIGINT NOT NULL)",
    "CREATE FUNCTION kb_word_chunks_added() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    + _WORD_COUNT_UPSERT.format(sign="", rows="added")
    + "; RETURN NULL; END $$",
    "CREATE FUNCTION kb_word_chunks_removed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    + _WORD_COUNT_UPSERT.format(sign="-", rows="removed")
    + "; DELETE FROM kb_word_chunks k USING (SELECT DISTINCT w FROM "
    + _WORDS_OF.format(rows="removed")
    + ") AS gone WHERE k.word = gone.w AND k.chunks <= 0; RETURN NULL; END $$",
    # The triggers first: creating one locks out writers, so the count below misses none.
    "CREATE TRIGGER kb_chunks_words_added AFTER INSERT ON kb_chunks REFERENCING NEW TABLE "
    "AS added FOR EACH STATEMENT EXECUTE FUNCTION kb_word_chunks_added()",
    "CREATE TRIGGER kb_chunks_words_removed AFTER DELETE ON kb_chunks REFERENCING OLD TABLE "
    "AS removed FOR EACH STATEMENT EXECUTE FUNCTION kb_word_chunks_removed()",
    "INSERT INTO kb_word_chunks (word, chunks) SELECT w, count(*) FROM "
    + _WORDS_OF.format(rows="kb_chunks")
    + " GROUP BY w",
    # The tsvector in the row, not in TOAST: a row is ~3 kB with its vector, and ~40% of the
    # tsvectors went out of line, each fetched from the TOAST table to be ranked (half the
    # keyword search's time at 100,000 chunks). The text and words, read for the few hits
    # only, go out of line instead. Rows written before keep their layout until rewritten.
    "ALTER TABLE kb_chunks ALTER COLUMN tsv SET STORAGE MAIN",
)


def _neutral_vectors(conn: psycopg.Connection[Any]) -> None:
    """The stored vectors made language-neutral (``nobusy.knowledge.neutral``), as the index
    now writes them and searches with them; a store at a time."""
    import numpy as np

    from nobusy.knowledge.chunking import Chunk
    from nobusy.knowledge.neutral import neutral

    stores = conn.execute("SELECT store_id, embedder FROM kb_index_stores").fetchall()
    for store_id, model in stores:
        rows = conn.execute(
            "SELECT id, text, heading, start_at, end_at, embedding::real[] FROM kb_chunks "
            "WHERE store_id = %s",
            (store_id,),
        ).fetchall()
        if not rows:
            continue
        contexts = [Chunk(r[1], int(r[3]), int(r[4]), r[2]).context for r in rows]
        new = neutral(model, contexts, np.asarray([r[5] for r in rows], dtype=np.float32))
        conn.execute(
            "UPDATE kb_chunks c SET embedding = n.embedding::vector FROM unnest(%s::bigint[], "
            "%s::text[]) AS n(id, embedding) WHERE c.id = n.id",
            ([r[0] for r in rows], [vector_text(vector) for vector in new]),
        )


def _pg_json(statement: str) -> str:
    """SQLite's JSON array length in PostgreSQL's words (``tried`` is JSON text in both)."""
    for row in ("NEW", "u"):
        statement = statement.replace(
            f"json_array_length({row}.tried)", f"jsonb_array_length({row}.tried::jsonb)"
        )
    return statement


# Set name -> migration name -> its statements. An empty step: nothing to do in PostgreSQL.
# A step is a statement, or a function for what SQL cannot say.
Step = str | Callable[[psycopg.Connection[Any]], None]
STEPS: dict[str, dict[str, tuple[Step, ...]]] = {
    NOBUSY.name: {
        "m001_keys": (_KEYS,),
        "m002_usage": (
            _USAGE,
            "CREATE INDEX usage_key_time ON usage (key_id, time)",
            "CREATE INDEX usage_time ON usage (time)",
        ),
        "m003_usage_notes": ("ALTER TABLE usage ADD COLUMN notes TEXT NOT NULL DEFAULT '[]'",),
        # The windows shared by the workers of one host: with PostgreSQL, Redis (`state`)
        # holds the limits of every replica.
        "m004_key_windows": (),
        "m005_key_names_reusable": (
            "ALTER TABLE keys DROP CONSTRAINT keys_name_key",
            "CREATE UNIQUE INDEX keys_active_name ON keys (name) WHERE revoked_at IS NULL",
        ),
        # The Responses API's kept responses stay in each replica's own nobusy.db for now
        # (store/responses.py): a replica other than the one that answered cannot see them.
        "m006_responses": (),
        "m007_usage_cache": ("ALTER TABLE usage ADD COLUMN cache TEXT",),
        # Every replica's kept responses (store/pg_responses.py): a conversation started on one
        # replica continues on any other.
        "m008_responses_shared": (
            "CREATE TABLE responses (id TEXT PRIMARY KEY, key_id TEXT, created_at TEXT NOT "
            "NULL, expires DOUBLE PRECISION NOT NULL, items BYTEA NOT NULL, response BYTEA NOT "
            "NULL)",
            "CREATE INDEX responses_expires ON responses (expires)",
        ),
        # The same tables (integers are BIGINT there): the knowledge base's records are this
        # host's for now, in nobusy.db beside its index; the tables are made so that a
        # PostgreSQL backend of store/knowledge.py needs no further migration.
        "m009_knowledge": tuple(s.replace(" INTEGER", " BIGINT") for s in KNOWLEDGE_TABLES),
        "m010_money": tuple(
            f"ALTER TABLE {table} ADD COLUMN {column.replace('INTEGER', 'BIGINT')}"
            for table, columns in (("usage", _MONEY_USAGE), ("keys", _MONEY_KEYS))
            for column in columns
        ),
        "m011_knowledge_claims": tuple(
            "ALTER TABLE kb_store_files ADD COLUMN "
            + column.replace("INTEGER", "BIGINT").replace("REAL", "DOUBLE PRECISION")
            for column in _KNOWLEDGE_CLAIMS
        ),
        # The daily rollup kept by a trigger, as in SQLite; the sessions table too, though the
        # console's sessions stay in each host's nobusy.db for now (store/sessions.py).
        "m012_console": (
            *(s.replace(" INTEGER", " BIGINT") for s in CONSOLE_TABLES),
            _pg_json(_USAGE_DAILY_FUNCTION),
            "CREATE TRIGGER usage_daily_add AFTER INSERT ON usage "
            "FOR EACH ROW EXECUTE FUNCTION usage_daily_add()",
            _pg_json(USAGE_DAILY_BACKFILL),
        ),
        # The same tables: a hold's conditional UPDATE locks its key's (and group's) row, so
        # every replica admits against one count.
        "m013_key_groups": (
            *(
                s.replace(" INTEGER", " BIGINT").replace(" REAL", " DOUBLE PRECISION")
                for s in KEY_GROUP_TABLES
            ),
            *(f"ALTER TABLE keys ADD COLUMN {c.replace('INTEGER', 'BIGINT')}" for c in _GROUP_KEYS),
        ),
        # The knowledge base shared by every replica: uploaded bytes in parts (a file another
        # replica received is read here), and the index (knowledge/pg_index.py): chunks with
        # their jieba words as a 'simple' tsvector and their vector (pgvector; one column for
        # every model, an HNSW index per dimension of the shipped models: 384, 512).
        "m014_knowledge_shared": _KNOWLEDGE_SHARED,
        "m015_neutral_vectors": (_neutral_vectors,),
        # How many chunks hold each word of the tsvectors (every store's), kept by triggers in
        # the writing statement's transaction, so every replica's writes count; the keyword
        # search leaves a query's commonest words out by them (knowledge/pg_keyword.py). The
        # tsvector kept in the row, where ranking reads it.
        "m016_knowledge_word_counts": _KNOWLEDGE_WORD_COUNTS,
    },
    AUDIT.name: {
        "m001_audit": (
            _AUDIT,
            "CREATE INDEX audit_time ON audit (time)",
            "CREATE TABLE audit_chain (name TEXT PRIMARY KEY, row_id BIGINT NOT NULL, "
            "row_hash TEXT NOT NULL, mac TEXT NOT NULL)",
            "CREATE TABLE audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            _AUDIT_GUARD,
            "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
        ),
    },
}

# Any fixed number: the lock only keeps two nobusy processes from migrating at once.
_LOCK = 0x6E6F62757379


def migrate(conn: psycopg.Connection[Any], *sets: Migrations) -> list[str]:
    """Apply the pending migrations of ``sets`` in one transaction; the names applied.

    psycopg's errors pass through: the caller names the URL (``startup_error``).
    """
    done: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (migration_set TEXT NOT NULL, name TEXT NOT "
            "NULL, applied_at TEXT NOT NULL, PRIMARY KEY (migration_set, name))"
        )
        for migrations in sets:
            have = set(applied(conn, migrations))
            for migration in migrations._migrations:  # the list's order (sqlite-utils keeps it)
                if migration.name in have:
                    continue
                for step in STEPS[migrations.name][migration.name]:
                    if callable(step):
                        step(conn)
                    else:
                        conn.execute(step.encode())
                conn.execute(
                    f"INSERT INTO {TABLE} VALUES (%s, %s, %s)",
                    (migrations.name, migration.name, str(datetime.now(UTC))),
                )
                done.append(migration.name)
    return done


def applied(conn: psycopg.Connection[Any], migrations: Migrations) -> list[str]:
    """The names of ``migrations`` applied to the database, in the order they were."""
    exists = conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()
    if exists is None or exists[0] is None:
        return []
    rows = conn.execute(
        f"SELECT name FROM {TABLE} WHERE migration_set = %s ORDER BY applied_at, name",
        (migrations.name,),
    )
    return [str(row[0]) for row in rows]


def migrated(url: str) -> Link:
    """A connection to the PostgreSQL at ``url`` with every migration applied; ConfigError
    naming what to check when it cannot be opened or migrated. Nothing is left open on any
    failure (a bug included), so no connection waits for the garbage collector."""
    link = Link(url)
    try:
        migrate(link.get().conn, NOBUSY, AUDIT)
    except ERRORS as exc:
        link.close()
        raise startup_error(exc, url, migrating=True) from None
    except BaseException:
        link.close()
        raise
    return link
