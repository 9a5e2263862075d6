"""Opening the store (a SQLite file, or PostgreSQL with ``[store] url``) and migrating its schema.

Owns: connection pragmas and the append-only migration list, applied to either store.

Invariants:
- ``connect``/``open_db`` take a ``Target``: a SQLite file's ``Path`` (the default) or a
  ``conn.PgStore``; the PostgreSQL connection looks like a ``sqlite3.Connection`` (``store.conn``).
- Every SQLite connection uses WAL, ``synchronous=NORMAL``, ``busy_timeout=5000`` and ``foreign_keys=ON``.
- Migrations are the functions in ``MIGRATIONS``: ONE list for both stores. The list is append-only:
  a released migration is never edited, removed or reordered; a schema change is a new function. A
  step is portable SQL (``db.execute(sql)``; on PostgreSQL it is run in its types: ``conn._ddl``)
  or a per-dialect pair (``_per_dialect``). SQLite applies them as ``sqlite_utils.Migrations``
  (recorded in ``_sqlite_migrations``); PostgreSQL records them the same way (migration set, name,
  time) in ``llmgw_migrations``, all pending steps in one transaction under an advisory lock.
- ``migrate`` is cheap when nothing is pending (one raw query, no sqlite-utils import), and safe
  when two processes (daemon and CLI) race to migrate: check and apply run under one write lock.
- Money is integer nano-dollars (``cost_nanos``), never a float.
- Definitions are written in the caller's ``transaction``: governance functions never commit.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import paths
from ..errors import ResourceError
from .conn import MIGRATE_LOCK, PgConnection, PgStore, Target, _ddl, connect_pg, is_pg
from .conn import label as target_label

if TYPE_CHECKING:
    from sqlite_utils import Database, Migrations

MIGRATION_SET = "llmgw"
MIGRATIONS_TABLE = "_sqlite_migrations"  # sqlite_utils.Migrations.migrations_table
PG_MIGRATIONS_TABLE = "llmgw_migrations"


def target(url: str | None, home_dir: Path) -> Target:
    """The store: PostgreSQL at ``url`` (``[store] url``), else the SQLite file under ``home_dir``."""
    return PgStore(url) if url else paths.db_path(home_dir)


def connect(path: Target, *, readonly: bool = False) -> Any:
    """Open ``path`` (a ``PgStore``: a PostgreSQL connection, see ``store.conn``) with the project's pragmas; the parent directory is created unless readonly.

    Durability: WAL with ``synchronous=NORMAL`` means a committed transaction survives the process
    being killed (even SIGKILL): the commit has reached the WAL file in the OS before ``commit()``
    returns. It is not fsynced on every commit, so an OS crash or power loss may lose the last few
    transactions (never corrupt the file). Surviving a process kill is our requirement. (PostgreSQL:
    a commit is durable when it returns.)

    ``readonly=True`` opens a connection that cannot write (``query_only``; ``mode=ro`` where the
    directory is not writable); the file must already exist. A new database file is created 0600
    (its -wal and -shm files follow), a new parent directory 0700: they hold prompts, answers and
    key hashes.
    """
    if isinstance(path, PgStore):
        return connect_pg(path, readonly=readonly)
    path = Path(path)
    if readonly:
        # mode=rw + query_only where we may write the directory: SQLite can then open (or create) the
        # WAL index file (-shm) and share it; a mode=ro connection without one rebuilds the index
        # from the WAL and drops its page cache on every read transaction (100x slower with no daemon)
        shared = os.access(path, os.W_OK) and os.access(path.resolve().parent, os.W_OK)
        mode = "rw" if shared else "ro"
        conn = sqlite3.connect(path.resolve().as_uri() + f"?mode={mode}", uri=True, check_same_thread=False)
        if shared:
            conn.execute("PRAGMA query_only=ON")
    else:
        memory = str(path) == ":memory:"
        new = memory or not path.exists() or path.stat().st_size == 0
        if not memory:
            path.parent.mkdir(parents=True, exist_ok=True, mode=paths.HOME_MODE)
            paths.private_file(path)
        conn = sqlite3.connect(path, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=5000")
    if not readonly:
        if new:  # only possible before the first table: lets ledger pruning shrink the file (store.retention)
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")  # persistent in the file; a reader inherits it
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction around the block: committed when it ends, rolled back if it raises.

    Callers own transactions: the governance functions never commit, their front ends (the CLI, the
    admin API, the TUI, ``config apply``) wrap one operation, or several, in this. ``BEGIN
    IMMEDIATE`` takes the write lock first, so what a function reads to check is what it writes
    against. Inside a transaction already, the block joins it.
    """
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def data_version(conn: sqlite3.Connection) -> int:  # SQLite only
    """``PRAGMA data_version``: changes when *another* connection commits anything at all."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def definitions_version(conn: sqlite3.Connection) -> int:
    """A counter that triggers bump on every change to customers, teams, keys or budgets.

    The daemon's reload cue: unlike ``data_version`` it does not move on ledger writes, which the
    daemon's own writer makes hundreds of times a second."""
    return int(conn.execute("SELECT version FROM definitions_version").fetchone()[0])


# ---- migrations (append-only: never edit a released function, add a new one) ---------------------


def _dialect(db: Any) -> str:
    return "postgres" if isinstance(db, _PgMigrationDb) else "sqlite"


def _per_dialect(db: Any, *, sqlite: list[str], postgres: list[str]) -> None:
    """A step written twice: once for each store."""
    for sql in (postgres if _dialect(db) == "postgres" else sqlite):
        db.execute(sql)


class _PgMigrationDb:
    """What a migration function is handed on PostgreSQL: ``execute`` runs a SQLite-typed statement
    in PostgreSQL's types, in the migration's transaction."""

    def __init__(self, conn: PgConnection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = None) -> Any:
        return self.conn.raw.execute(_ddl(sql) if sql.lstrip()[:6].upper() in ("CREATE", "ALTER ") else sql, params)


def m001_initial(db: Database) -> None:
    for sql in (
        """CREATE TABLE customers (
            id TEXT PRIMARY KEY, name TEXT, created_at TEXT NOT NULL, meta TEXT)""",
        """CREATE TABLE teams (
            id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id), name TEXT,
            created_at TEXT NOT NULL, meta TEXT)""",
        """CREATE TABLE keys (
            id TEXT PRIMARY KEY, name TEXT UNIQUE, key_hash TEXT NOT NULL UNIQUE, display TEXT NOT NULL,
            customer_id TEXT REFERENCES customers(id), team_id TEXT REFERENCES teams(id),
            status TEXT NOT NULL DEFAULT 'active', models TEXT, created_at TEXT NOT NULL,
            expires_at TEXT, meta TEXT)""",
        """CREATE TABLE ledger (
            id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, ts_ms INTEGER NOT NULL, route TEXT NOT NULL,
            model TEXT, provider TEXT, upstream_model TEXT, stream INTEGER NOT NULL DEFAULT 0,
            status INTEGER NOT NULL, outcome TEXT NOT NULL, error_type TEXT, error_code TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0, cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            cost_nanos INTEGER NOT NULL DEFAULT 0, latency_ms REAL, ttfb_ms REAL,
            attempts INTEGER NOT NULL DEFAULT 0, key_id TEXT, team_id TEXT, customer_id TEXT,
            client_retry INTEGER, cache TEXT, request_body TEXT, response_body TEXT)""",
        "CREATE INDEX ledger_ts_ms ON ledger(ts_ms)",
        "CREATE INDEX ledger_request_id ON ledger(request_id)",
        "CREATE INDEX ledger_customer_ts ON ledger(customer_id, ts_ms)",
        "CREATE INDEX ledger_key_ts ON ledger(key_id, ts_ms)",
    ):
        db.execute(sql)
    if _dialect(db) == "postgres":  # SQLite's implicit rowid orders rows made in one millisecond
        for table in ("customers", "teams", "keys"):
            db.execute(f"ALTER TABLE {table} ADD COLUMN rowid BIGINT GENERATED ALWAYS AS IDENTITY")


def m002_usage_estimated(db: Database) -> None:
    # 1 when the provider never reported usage (stream broken or abandoned) and the tokens are an
    # estimate from the bytes seen; 0 when they are the provider's own numbers.
    db.execute("ALTER TABLE ledger ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0")


def m003_governance(db: Database) -> None:
    """Budgets, key options (limits, rotation), governance events, idempotency, ledger extras."""
    for sql in (
        # per-key options; limits NULL = unlimited
        "ALTER TABLE keys ADD COLUMN rpm INTEGER",
        "ALTER TABLE keys ADD COLUMN tpm INTEGER",
        "ALTER TABLE keys ADD COLUMN clamp INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE keys ADD COLUMN cache_mode TEXT",
        # rotation: the previous secret stays valid until prev_valid_until (ISO-8601 UTC)
        "ALTER TABLE keys ADD COLUMN prev_key_hash TEXT",
        "ALTER TABLE keys ADD COLUMN prev_valid_until TEXT",
        "ALTER TABLE keys ADD COLUMN revoked_at TEXT",
        """CREATE TABLE budgets (
            id TEXT PRIMARY KEY,
            scope TEXT NOT NULL CHECK (scope IN ('customer', 'team', 'key')),
            scope_id TEXT NOT NULL,
            period TEXT NOT NULL CHECK (period IN ('day', 'week', 'month', 'total')),
            limit_nanos INTEGER NOT NULL CHECK (limit_nanos >= 0),
            hard INTEGER NOT NULL DEFAULT 1,
            warn_pct INTEGER NOT NULL DEFAULT 80 CHECK (warn_pct BETWEEN 1 AND 100),
            grace_nanos INTEGER NOT NULL DEFAULT 0 CHECK (grace_nanos >= 0),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (scope, scope_id, period))""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            kind TEXT NOT NULL,
            budget_id TEXT,
            scope TEXT,
            scope_id TEXT,
            period_start_ms INTEGER,
            threshold INTEGER,
            detail TEXT,
            delivered INTEGER NOT NULL DEFAULT 0)""",
        # one soft-cap / grace event per budget per period per threshold
        "CREATE UNIQUE INDEX events_once ON events(kind, budget_id, period_start_ms, threshold)"
        " WHERE budget_id IS NOT NULL",
        """CREATE TABLE idempotency (
            key_id TEXT NOT NULL,
            idem_key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            status INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            body BLOB NOT NULL,
            created_ms INTEGER NOT NULL,
            PRIMARY KEY (key_id, idem_key))""",
        "ALTER TABLE ledger ADD COLUMN reserved_nanos INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE ledger ADD COLUMN idempotent_replay INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX ledger_team_ts ON ledger(team_id, ts_ms)",
    ):
        db.execute(sql)


def m004_definitions_version(db: Database) -> None:
    """A version counter for definitions, bumped by triggers (see ``definitions_version``)."""
    db.execute("CREATE TABLE definitions_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO definitions_version (version) VALUES (0)")
    _per_dialect(db, sqlite=[
        f"CREATE TRIGGER {table}_{op.lower()}_bumps_version AFTER {op} ON {table} "
        "BEGIN UPDATE definitions_version SET version = version + 1; END"
        for table in ("customers", "teams", "keys", "budgets") for op in ("INSERT", "UPDATE", "DELETE")
    ], postgres=[
        "CREATE FUNCTION llmgw_bump_definitions_version() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN UPDATE definitions_version SET version = version + 1; RETURN NULL; END $$",
        *(f"CREATE TRIGGER {table}_bumps_version AFTER INSERT OR UPDATE OR DELETE ON {table}"
          " FOR EACH ROW EXECUTE FUNCTION llmgw_bump_definitions_version()"
          for table in ("customers", "teams", "keys", "budgets")),
    ])


def m005_cache(db: Database) -> None:
    """Response cache entries (exact + semantic) and the vector index's metadata."""
    for sql in (
        # AUTOINCREMENT: ids are usearch keys and are never reused, so a stale vector left in the
        # index (another process cleared or evicted) can never point at a newer, different entry
        """CREATE TABLE cache_entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            scope TEXT NOT NULL,                 -- customer id, or '*' for global
            model TEXT NOT NULL,
            namespace TEXT NOT NULL DEFAULT '',
            context_hash TEXT NOT NULL,          -- everything not embedded: system, earlier turns, params
            exact_hash TEXT NOT NULL,
            facts TEXT NOT NULL DEFAULT '',      -- field-guard fingerprint
            prompt_text TEXT,
            vector BLOB,                         -- float16 bytes; the usearch index is rebuilt from these
            response BLOB NOT NULL,
            content_type TEXT NOT NULL,
            usage_json TEXT,
            cost_nanos INTEGER NOT NULL DEFAULT 0,
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER,
            last_hit_ms INTEGER NOT NULL,
            hits INTEGER NOT NULL DEFAULT 0)""",
        "CREATE UNIQUE INDEX cache_entries_exact ON cache_entries(scope, model, namespace, exact_hash)",
        "CREATE INDEX cache_entries_lru ON cache_entries(last_hit_ms)",
        "CREATE INDEX cache_entries_expires ON cache_entries(expires_ms) WHERE expires_ms IS NOT NULL",
        "CREATE INDEX cache_entries_namespace ON cache_entries(namespace)",
        "CREATE TABLE cache_meta (key TEXT PRIMARY KEY, value TEXT)",
    ):
        db.execute(sql)


def m006_cache_ledger(db: Database) -> None:
    """Ledger columns for cache hits: the semantic similarity and the upstream cost saved."""
    db.execute("ALTER TABLE ledger ADD COLUMN cache_similarity REAL")
    db.execute("ALTER TABLE ledger ADD COLUMN saved_nanos INTEGER NOT NULL DEFAULT 0")


def m007_rollups(db: Database) -> None:
    """Hourly and daily ledger roll-ups and ``ledger_meta`` (their watermark, the retention
    boundaries); empty: the rows already there are rolled up by ``rollups.catch_up`` (``serve`` runs
    it at start, in chunks), not inside this one migration transaction."""
    from . import rollups

    for sql in rollups.schema_sql():
        db.execute(sql)


def m008_cache_audit(db: Database) -> None:
    """The cache entry that answered a hit (ledger), per-key cache thresholds, the semantic hit log
    (the prompt asked and the entry that answered) and labelled pairs for ``cache ablate``."""
    for sql in (
        "ALTER TABLE ledger ADD COLUMN cache_entry_id INTEGER",
        "ALTER TABLE keys ADD COLUMN cache_threshold REAL",
        """CREATE TABLE cache_hit_log (
            request_id TEXT PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            entry_id INTEGER NOT NULL,
            similarity REAL NOT NULL,
            prompt TEXT,
            kind TEXT NOT NULL)           -- hit | shadow""",
        "CREATE INDEX cache_hit_log_ts ON cache_hit_log(ts_ms)",
        """CREATE TABLE cache_labels (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts_ms INTEGER NOT NULL,
            source TEXT NOT NULL,         -- shadow | verify | mark-wrong
            request_id TEXT,
            entry_id INTEGER,
            similarity REAL,
            cached_prompt TEXT,
            asked_prompt TEXT,
            label INTEGER)                -- 1: the cached answer was right for the asked prompt, 0: wrong""",
    ):
        db.execute(sql)


def m009_auto_raise(db: Database) -> None:
    """Budget auto-raise: the step a hard limit rises by instead of refusing (0: off), and its ceiling."""
    db.execute("ALTER TABLE budgets ADD COLUMN raise_step_nanos INTEGER NOT NULL DEFAULT 0"
               " CHECK (raise_step_nanos >= 0)")
    db.execute("ALTER TABLE budgets ADD COLUMN ceiling_nanos INTEGER NOT NULL DEFAULT 0 CHECK (ceiling_nanos >= 0)")


def m010_fail_open(db: Database) -> None:
    """Cluster mode: a hard budget that admits on the instance's own view while Redis is unreachable
    (1), instead of failing closed with 503 governance_unavailable (0, the default)."""
    db.execute("ALTER TABLE budgets ADD COLUMN fail_open INTEGER NOT NULL DEFAULT 0 CHECK (fail_open IN (0, 1))")


def m011_cache_exact_key(db: Database) -> None:
    """Cache entries keyed by the 64-bit digest of their exact key (``cache.store.exact_digest``):
    a unique index on one INTEGER instead of four text columns (a store wrote a random ~90-byte key
    into a wide index; the digest is 8 bytes). Existing rows get their digest here; should two of
    them collide, the newer one stays (the older is only a cache entry)."""
    from ..cache.store import exact_digest, exact_key

    db.execute("ALTER TABLE cache_entries ADD COLUMN exact_key INTEGER")
    mark = "%s" if _dialect(db) == "postgres" else "?"
    rows = [(exact_key(exact_digest(scope, model, ns, exact_hash)), int(eid)) for eid, scope, model, ns, exact_hash
            in db.execute("SELECT id, scope, model, namespace, exact_hash FROM cache_entries")]
    for row in rows:
        db.execute(f"UPDATE cache_entries SET exact_key = {mark} WHERE id = {mark}", row)
    db.execute("DELETE FROM cache_entries WHERE id NOT IN (SELECT max(id) FROM cache_entries GROUP BY exact_key)")
    db.execute("DROP INDEX cache_entries_exact")
    db.execute("CREATE UNIQUE INDEX cache_entries_exact_key ON cache_entries(exact_key)")


MIGRATIONS: tuple[Callable[[Database], None], ...] = (m001_initial, m002_usage_estimated, m003_governance,
                                                      m004_definitions_version, m005_cache, m006_cache_ledger,
                                                      m007_rollups, m008_cache_audit, m009_auto_raise,
                                                      m010_fail_open, m011_cache_exact_key)


def _migration_set() -> Migrations:
    from sqlite_utils import Migrations

    migrations = Migrations(MIGRATION_SET)
    for fn in MIGRATIONS:
        migrations()(fn)
    return migrations


def _applied(conn: sqlite3.Connection) -> set[str]:
    try:
        cur = conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ?", (MIGRATION_SET,))
    except sqlite3.OperationalError:  # no migrations table yet
        return set()
    return {row[0] for row in cur}


def _applied_pg(conn: PgConnection) -> set[str]:
    raw = conn.raw
    row: Any = raw.execute(f"SELECT to_regclass('{PG_MIGRATIONS_TABLE}')").fetchone()
    if row[0] is None:
        return set()
    return {r[0] for r in raw.execute(f"SELECT name FROM {PG_MIGRATIONS_TABLE} WHERE migration_set = %s",
                                      (MIGRATION_SET,))}


def _migrate_pg(conn: PgConnection) -> None:
    """Every pending step in one transaction, under an advisory lock (racing migrators wait, then
    find nothing left to do); PostgreSQL's DDL is transactional, so a failed step leaves nothing."""
    from ..clock import now_ms
    from ..units import iso_utc

    wanted = [fn.__name__ for fn in MIGRATIONS]
    if set(wanted) <= _applied_pg(conn):
        return
    raw = conn.raw
    try:
        with raw.transaction():
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            raw.execute(f"CREATE TABLE IF NOT EXISTS {PG_MIGRATIONS_TABLE} (migration_set TEXT NOT NULL,"
                        " name TEXT NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (migration_set, name))")
            done = _applied_pg(conn)
            db = _PgMigrationDb(conn)
            for fn in MIGRATIONS:
                if fn.__name__ in done:
                    continue
                fn(db)  # type: ignore[arg-type]
                raw.execute(f"INSERT INTO {PG_MIGRATIONS_TABLE} (migration_set, name, applied_at) VALUES (%s, %s, %s)",
                            (MIGRATION_SET, fn.__name__, iso_utc(now_ms())))
    except Exception as e:
        from .conn import _is_driver_error, as_sqlite_error

        if _is_driver_error(e):
            raise as_sqlite_error(e, conn.store) from None
        raise


def applied(conn: Any) -> set[str]:
    """The names of the migrations applied to this store."""
    return _applied_pg(conn) if is_pg(conn) else _applied(conn)


def migrate(conn: Any) -> None:
    """Apply pending migrations in one ``BEGIN IMMEDIATE`` transaction (idempotent)."""
    if is_pg(conn):
        _migrate_pg(conn)
        return
    if {fn.__name__ for fn in MIGRATIONS} <= _applied(conn):
        return
    from sqlite_utils import Database

    db = Database(conn, recursive_triggers=False, execute_plugins=False)
    conn.commit()
    conn.execute("BEGIN IMMEDIATE")  # serialise racing migrators; re-check under the lock
    try:
        _migration_set().apply(db)  # nested in our transaction: each migration is a savepoint
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def open_db(path: Target) -> Any:
    """``connect`` + ``migrate``: the way every component opens the database for writing.

    A database that cannot be opened or migrated (not a database, unreadable, a full disk, a
    directory in its place) raises ``ResourceError`` naming the file, for every front end to show
    as one line."""
    try:
        conn = connect(path)
    except (OSError, sqlite3.DatabaseError) as e:
        raise unusable(path, e) from e
    try:
        migrate(conn)
    except BaseException as e:
        conn.close()
        if isinstance(e, sqlite3.DatabaseError):
            raise unusable(path, e) from e
        raise
    return conn


def unusable(path: Target, exc: BaseException) -> ResourceError:
    """The ``ResourceError`` for a database (file or server) that cannot be used."""
    msg = path.scrub(str(exc)) if isinstance(path, PgStore) else str(exc)
    return ResourceError(f"cannot open the database {target_label(path)}: {msg}")
