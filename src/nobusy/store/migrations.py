"""One migration system for every database file nobusy keeps: ``nobusy.db`` and ``audit.db``.

Each file has its own list of migrations (``NOBUSY``, ``AUDIT``): decorated functions applied in
order and recorded in the file's ``_sqlite_migrations`` table (sqlite-utils' ``Migrations``).
A released migration is never edited or renamed, only followed by new ones. ``migrate`` opens
a file and applies what is pending in one ``BEGIN IMMEDIATE`` transaction: several workers
start at once, and the others wait, then find the migrations applied, instead of racing to
create the same tables.

``audit.db`` files written before this module recorded their migrations in a table of their
own, ``migrations (name, applied_at)``; its names are adopted into ``_sqlite_migrations`` the
first time such a file is opened, so nothing is applied twice. The old table is left in place:
an older nobusy opening the file again still finds its own record.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from nobusy.errors import ConfigError
from nobusy.store.sqlite import connect, private_dir, private_file, transaction

__all__ = [
    "AUDIT",
    "AUDIT_NO_DELETE",
    "CACHE",
    "CONSOLE_TABLES",
    "DB_NAME",
    "KEY_GROUP_TABLES",
    "NOBUSY",
    "USAGE_DAILY_BACKFILL",
    "USAGE_DAILY_INSERT",
    "migrate",
    "open_db",
]

DB_NAME = "nobusy.db"

# --- nobusy.db: keys, usage, the key windows ----------------------------------------------------

NOBUSY = Migrations("nobusy")


@NOBUSY()
def m001_keys(db: Database) -> None:
    db.execute("""
        CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            priority TEXT NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
            rpm INTEGER,
            tpm INTEGER,
            max_concurrency INTEGER,
            quota_tokens INTEGER,
            balance INTEGER,
            models TEXT,
            max_wait REAL,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            revoked_at TEXT,
            last_used_at TEXT
        )
    """)


@NOBUSY()
def m002_usage(db: Database) -> None:
    # key_id is NULL while no keys exist; keys are revoked, never deleted, so it stays valid.
    db.execute("""
        CREATE TABLE usage (
            id INTEGER PRIMARY KEY,
            time TEXT NOT NULL,
            request_id TEXT NOT NULL,
            key_id TEXT REFERENCES keys(id),
            alias TEXT NOT NULL,
            upstream TEXT,
            tried TEXT NOT NULL DEFAULT '[]',
            stream INTEGER NOT NULL DEFAULT 0,
            outcome TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            ttft_ms REAL,
            queue_ms REAL,
            duration_ms REAL,
            overflow INTEGER NOT NULL DEFAULT 0
        )
    """)
    db.execute("CREATE INDEX usage_key_time ON usage (key_id, time)")
    db.execute("CREATE INDEX usage_time ON usage (time)")


@NOBUSY()
def m003_usage_notes(db: Database) -> None:
    # Failover notes (continuations) as a JSON list, like `tried`.
    db.execute("ALTER TABLE usage ADD COLUMN notes TEXT NOT NULL DEFAULT '[]'")


@NOBUSY()
def m004_key_windows(db: Database) -> None:
    # Per-key request/token windows and requests in flight, shared by worker processes.
    db.execute(
        "CREATE TABLE key_window (id INTEGER PRIMARY KEY, key_id TEXT NOT NULL, "
        "at REAL NOT NULL, requests INTEGER NOT NULL, tokens INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX key_window_key_at ON key_window (key_id, at)")
    db.execute(
        "CREATE TABLE key_in_flight (key_id TEXT NOT NULL, pid INTEGER NOT NULL, "
        "n INTEGER NOT NULL, PRIMARY KEY (key_id, pid))"
    )


@NOBUSY()
def m005_key_names_reusable(db: Database) -> None:
    # A revoked key's name may be given to a new key: names are unique among keys not
    # revoked. SQLite cannot drop a column's UNIQUE, so the table is rebuilt (usage rows
    # refer to keys by id, which is kept).
    columns = (
        "id, name, prefix, hash, priority, rpm, tpm, max_concurrency, quota_tokens, balance, "
        "models, max_wait, created_at, expires_at, revoked_at, last_used_at"
    )
    db.execute("""
        CREATE TABLE keys_new (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            priority TEXT NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
            rpm INTEGER,
            tpm INTEGER,
            max_concurrency INTEGER,
            quota_tokens INTEGER,
            balance INTEGER,
            models TEXT,
            max_wait REAL,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            revoked_at TEXT,
            last_used_at TEXT
        )
    """)
    db.execute(f"INSERT INTO keys_new ({columns}) SELECT {columns} FROM keys ORDER BY rowid")
    db.execute("DROP TABLE keys")
    db.execute("ALTER TABLE keys_new RENAME TO keys")
    db.execute("CREATE UNIQUE INDEX keys_active_name ON keys (name) WHERE revoked_at IS NULL")


@NOBUSY()
def m006_responses(db: Database) -> None:
    # The Responses API's stored responses (store/responses.py): the conversation so far as
    # Responses items, for previous_response_id, and the response for GET /v1/responses/{id}.
    db.execute(
        "CREATE TABLE responses (id TEXT PRIMARY KEY, key_id TEXT, created_at TEXT NOT NULL, "
        "expires REAL NOT NULL, items BLOB NOT NULL, response BLOB NOT NULL)"
    )
    db.execute("CREATE INDEX responses_expires ON responses (expires)")


@NOBUSY()
def m007_usage_cache(db: Database) -> None:
    # The response cache's part in a request: hit, stale, miss (NULL: not cached).
    db.execute("ALTER TABLE usage ADD COLUMN cache TEXT")


@NOBUSY()
def m008_responses_shared(db: Database) -> None:
    # Nothing in SQLite: with `store: postgresql://` the kept responses move to PostgreSQL
    # (store/pg_responses.py), so every replica can continue a conversation.
    pass


@NOBUSY()
def m009_knowledge(db: Database) -> None:
    # The knowledge base's records (store/knowledge.py): uploaded files (their bytes are under
    # data_dir/files), vector stores, the files each store holds with their
    # ingestion status, batches, and the stores a key was granted. Times are Unix seconds, as
    # the Files and Vector Stores APIs give them; owner is the creating key (NULL without keys).
    for statement in KNOWLEDGE_TABLES:
        db.execute(statement)


KNOWLEDGE_TABLES = (
    "CREATE TABLE kb_files (id TEXT PRIMARY KEY, owner TEXT, filename TEXT NOT NULL, "
    "purpose TEXT NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, "
    "created_at INTEGER NOT NULL, expires_at INTEGER)",
    "CREATE INDEX kb_files_owner ON kb_files (owner, created_at)",
    "CREATE TABLE kb_stores (id TEXT PRIMARY KEY, owner TEXT, name TEXT, "
    "embedding_model TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', expires_after TEXT, "
    "created_at INTEGER NOT NULL, last_active_at INTEGER NOT NULL)",
    "CREATE INDEX kb_stores_owner ON kb_stores (owner, created_at)",
    "CREATE TABLE kb_store_files (store_id TEXT NOT NULL, file_id TEXT NOT NULL, "
    "batch_id TEXT, status TEXT NOT NULL, last_error TEXT, attributes TEXT NOT NULL "
    "DEFAULT '{}', chunking TEXT, usage_bytes INTEGER NOT NULL DEFAULT 0, "
    "chunks INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, "
    "PRIMARY KEY (store_id, file_id))",
    "CREATE INDEX kb_store_files_status ON kb_store_files (status)",
    "CREATE INDEX kb_store_files_batch ON kb_store_files (batch_id)",
    "CREATE TABLE kb_batches (id TEXT PRIMARY KEY, store_id TEXT NOT NULL, "
    "status TEXT NOT NULL, created_at INTEGER NOT NULL)",
    "CREATE TABLE kb_grants (key_id TEXT NOT NULL, store_id TEXT NOT NULL, "
    "PRIMARY KEY (key_id, store_id))",
)


@NOBUSY()
def m010_money(db: Database) -> None:
    # What each request cost (nobusy.money.spend), in micro-units so that sums are exact, and
    # each key's money budget (nobusy.money.budgets): spent since budget_since, the start of
    # the current period.
    for column in _MONEY_USAGE:
        db.execute(f"ALTER TABLE usage ADD COLUMN {column}")
    for column in _MONEY_KEYS:
        db.execute(f"ALTER TABLE keys ADD COLUMN {column}")


_MONEY_USAGE = (
    "cached_tokens INTEGER NOT NULL DEFAULT 0",
    "usage_source TEXT",
    "currency TEXT",
    "cost_micros INTEGER NOT NULL DEFAULT 0",
    "report_currency TEXT",
    "report_cost_micros INTEGER NOT NULL DEFAULT 0",
    "first_choice TEXT",
    "first_choice_cost_micros INTEGER",
)
_MONEY_KEYS = (
    "budget_micros INTEGER",
    "budget_period TEXT",
    "spent_micros INTEGER NOT NULL DEFAULT 0",
    "budget_since TEXT",
)


@NOBUSY()
def m011_knowledge_claims(db: Database) -> None:
    # Which ingestion worker holds a file in progress (nobusy/knowledge/claims.py), so the
    # processes of `--workers N` ingest each file once; claims counts how often it was taken up.
    for column in _KNOWLEDGE_CLAIMS:
        db.execute(f"ALTER TABLE kb_store_files ADD COLUMN {column}")


_KNOWLEDGE_CLAIMS = (
    "claimed_by TEXT",
    "claimed_at REAL",
    "claims INTEGER NOT NULL DEFAULT 0",
)


@NOBUSY()
def m012_console(db: Database) -> None:
    # The console's usage page reads days, not requests: a daily rollup by key, alias and
    # upstream, kept by a trigger in the transaction that inserts the row (so no writer
    # changes, and the sums are the rows' exactly), and filled from the rows already there.
    # Its sign-in sessions: the hash of each cookie's token, revocable at once.
    for statement in CONSOLE_TABLES:
        db.execute(statement)
    db.execute(USAGE_DAILY_TRIGGER)
    db.execute(USAGE_DAILY_BACKFILL)


@NOBUSY()
def m013_key_groups(db: Database) -> None:
    # Key groups (teams) with a money budget of their own, each key in at most one; and the
    # money reserved by requests in flight (nobusy.money.holds): each hold a row, summed on
    # its key and group so that one conditional UPDATE admits a request across processes.
    for statement in KEY_GROUP_TABLES:
        db.execute(statement)
    for column in _GROUP_KEYS:
        db.execute(f"ALTER TABLE keys ADD COLUMN {column}")


KEY_GROUP_TABLES = (
    "CREATE TABLE key_groups (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
    "budget_micros INTEGER, budget_period TEXT, spent_micros INTEGER NOT NULL DEFAULT 0, "
    "budget_since TEXT, reserved_micros INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL)",
    "CREATE TABLE money_holds (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, group_id TEXT, "
    "micros INTEGER NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX money_holds_expires ON money_holds (expires)",
)
_GROUP_KEYS = ("group_id TEXT", "reserved_micros INTEGER NOT NULL DEFAULT 0")


@NOBUSY()
def m014_knowledge_shared(db: Database) -> None:
    # Nothing in SQLite: with `store: postgresql://` the knowledge base's bytes, chunks and
    # vectors move to PostgreSQL (store/pg_knowledge.py, knowledge/pg_index.py), so every
    # replica searches one base; in SQLite they stay in data_dir/files and knowledge.db.
    pass


@NOBUSY()
def m015_neutral_vectors(db: Database) -> None:
    # Nothing in SQLite: the knowledge index's own file converts its vectors to language-
    # neutral ones when opened (knowledge/index.py, ``_upgrade``); in PostgreSQL this step does.
    pass


@NOBUSY()
def m016_knowledge_word_counts(db: Database) -> None:
    # Nothing in SQLite: FTS5 keeps its own counts of the chunks holding each word
    # (knowledge/index.py); PostgreSQL's keyword search needs a table of them
    # (knowledge/pg_keyword.py).
    pass


# Keys and upstreams are '' rather than NULL: NULLs are distinct to a UNIQUE constraint.
CONSOLE_TABLES = (
    "CREATE TABLE usage_daily (day TEXT NOT NULL, key_id TEXT NOT NULL, alias TEXT NOT NULL, "
    "upstream TEXT NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL, "
    "failovers INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER "
    "NOT NULL, cached_tokens INTEGER NOT NULL, cost_micros INTEGER NOT NULL, "
    "first_choice_cost_micros INTEGER NOT NULL, last_time TEXT NOT NULL, "
    "PRIMARY KEY (day, key_id, alias, upstream))",
    "CREATE TABLE console_sessions (token_hash TEXT PRIMARY KEY, created TEXT NOT NULL, "
    "expires REAL NOT NULL, client TEXT)",
)
# One row's contribution, as (column, value) pairs over NEW: the trigger and the backfill.
_DAILY_VALUES = (
    ("requests", "1"),
    ("errors", "CASE WHEN {r}.outcome IN ('ok', 'client_gone') THEN 0 ELSE 1 END"),
    ("failovers", "CASE WHEN json_array_length({r}.tried) > 1 THEN 1 ELSE 0 END"),
    ("prompt_tokens", "{r}.prompt_tokens"),
    ("completion_tokens", "{r}.completion_tokens"),
    ("cached_tokens", "{r}.cached_tokens"),
    ("cost_micros", "{r}.report_cost_micros"),
    ("first_choice_cost_micros", "COALESCE({r}.first_choice_cost_micros, {r}.report_cost_micros)"),
)
_DAILY_KEY = (
    "substr({r}.time, 1, 10), COALESCE({r}.key_id, ''), {r}.alias, COALESCE({r}.upstream, '')"
)
_DAILY_COLUMNS = "day, key_id, alias, upstream, " + ", ".join(c for c, _ in _DAILY_VALUES)
_DAILY_UPSERT = (
    "ON CONFLICT (day, key_id, alias, upstream) DO UPDATE SET "
    + ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c, _ in _DAILY_VALUES)
    + ", last_time = CASE WHEN excluded.last_time > usage_daily.last_time "
    "THEN excluded.last_time ELSE usage_daily.last_time END"
)
USAGE_DAILY_INSERT = (
    f"INSERT INTO usage_daily ({_DAILY_COLUMNS}, last_time) VALUES ("
    + _DAILY_KEY.format(r="NEW")
    + ", "
    + ", ".join(v.format(r="NEW") for _, v in _DAILY_VALUES)
    + f", NEW.time) {_DAILY_UPSERT}"
)
USAGE_DAILY_TRIGGER = (
    f"CREATE TRIGGER usage_daily_add AFTER INSERT ON usage BEGIN {USAGE_DAILY_INSERT}; END"
)
USAGE_DAILY_BACKFILL = (
    f"INSERT INTO usage_daily ({_DAILY_COLUMNS}, last_time) SELECT "
    + _DAILY_KEY.format(r="u")
    + ", "
    + ", ".join(f"SUM({v.format(r='u')})" for _, v in _DAILY_VALUES)
    + ", MAX(u.time) FROM usage u GROUP BY "
    + _DAILY_KEY.format(r="u")
)


# --- cache.db: the response cache of one host (cache/, store/response_cache.py) -----------------

CACHE = Migrations("nobusy-cache")


@CACHE()
def m001_cache(db: Database) -> None:
    db.execute(
        "CREATE TABLE cache (key TEXT PRIMARY KEY, expires REAL NOT NULL, value BLOB NOT NULL)"
    )
    db.execute("CREATE INDEX cache_expires ON cache (expires)")


# --- audit.db: the chained audit rows ----------------------------------------------------------

AUDIT = Migrations("nobusy-audit")
# Dropped and re-created by prune, the only code that may delete audit rows.
AUDIT_NO_DELETE = (
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit rows are append-only: use prune'); END"
)


@AUDIT()
def m001_audit(db: Database) -> None:
    db.execute(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, time TEXT NOT NULL, request_id TEXT NOT "
        "NULL, key_id TEXT, alias TEXT, upstream TEXT, event TEXT NOT NULL, content BLOB, "
        "content_hash TEXT, prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX audit_time ON audit (time)")
    # 'head' (last row written) and 'anchor' (last row pruned): row id, its hash, a MAC.
    db.execute(
        "CREATE TABLE audit_chain (name TEXT PRIMARY KEY, row_id INTEGER NOT NULL, "
        "row_hash TEXT NOT NULL, mac TEXT NOT NULL)"
    )
    db.execute("CREATE TABLE audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    # Guards against mistakes, not attackers (they can drop triggers; the chain catches them).
    db.execute(
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END"
    )
    db.execute(AUDIT_NO_DELETE)


# The table audit.db recorded its migrations in before it used AUDIT.
_LEGACY = {AUDIT.name: "migrations"}


# --- Opening ------------------------------------------------------------------------------------


def migrate(path: Path, migrations: Migrations, *, autocommit: bool = False) -> Database:
    """Open (creating it if needed, 0600 in a 0700 directory) the database ``path`` in WAL mode
    and apply ``migrations``; OSError or sqlite3.Error when it cannot."""
    private_dir(path.parent)
    private_file(path)
    conn = connect(path, autocommit=autocommit)
    try:
        db = Database(conn, execute_plugins=False)
        with transaction(conn):
            _adopt_legacy(db, migrations)
            migrations.apply(db)
    except BaseException:
        conn.close()
        raise
    return db


def open_db(data_dir: Path) -> Database:
    """Open (creating it if needed) ``data_dir/nobusy.db`` in WAL mode and apply migrations.

    Raises ConfigError naming the file when it cannot be opened, created or migrated.
    """
    path = data_dir / DB_NAME
    try:
        return migrate(path, NOBUSY)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot open the database {path}: {reason}") from None


def _adopt_legacy(db: Database, migrations: Migrations) -> None:
    """Record in ``_sqlite_migrations`` what the file's older table says was applied."""
    legacy = _LEGACY.get(migrations.name)
    if legacy is None or not db.table(legacy).exists():
        return
    applied = {m.name for m in migrations.applied(db)}
    adopted = [
        {"migration_set": migrations.name, "name": name, "applied_at": applied_at}
        for name, applied_at in db.execute(f"SELECT name, applied_at FROM {legacy} ORDER BY rowid")
        if name not in applied
    ]
    if adopted:
        migrations.ensure_migrations_table(db)
        db.table(Migrations.migrations_table).insert_all(adopted)
