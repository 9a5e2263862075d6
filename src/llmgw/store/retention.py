"""Retention: deleting old raw ledger rows and logged bodies, and giving the space back.

Owns ``prune_rows`` (``llmgw ledger prune`` and ``[ledger] retain_days``), ``prune_bodies``
(``[log] bodies_retain_days``) and ``reclaim`` (incremental vacuum).

Invariants:
- Reports never change: raw rows are deleted only once they are in the roll-ups (``rollups.catch_up``
  runs first, and only ids up to the watermark are deleted), and only whole UTC days, so every hour
  before the boundary is fully in ``ledger_hourly``/``ledger_daily``. The boundary is recorded
  (``rollups.pruned_before``) before the first row goes.
- The daemon's writer is never held for long: deletes, body erasure and vacuum run in chunks,
  one short write transaction each (the writer waits at most one chunk; ``busy_timeout`` is 5 s).
- A database created by this version uses ``auto_vacuum=INCREMENTAL`` (set by ``db.connect`` on a
  new file), so freed pages go back to the file system chunk by chunk. An older file keeps its
  free pages for reuse (the file stops growing) until ``reclaim(full=True)`` (``llmgw ledger prune
  --vacuum``) converts it with one full ``VACUUM``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError
from ..units import DAY_MS, iso_utc
from . import rollups
from .conn import is_pg
from .db import transaction

CHUNK_ROWS = 20_000
VACUUM_PAGES = 2_048


@dataclass
class PruneResult:
    before_ms: int
    rows: int  # raw rows deleted (or, in a dry run, that would be)
    bodies: int  # rows whose logged bodies were erased (or would be)
    bytes_before: int
    bytes_after: int
    dry_run: bool

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "before": iso_utc(self.before_ms)}


def db_bytes(conn: sqlite3.Connection) -> int:
    """The database's size in bytes, free pages excluded (what a full vacuum would leave; PostgreSQL:
    the database's size as it reports it)."""
    if is_pg(conn):
        return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
    page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    count = int(conn.execute("PRAGMA page_count").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return (count - free) * page


def file_bytes(conn: sqlite3.Connection) -> int:
    """The database file's size in bytes (free pages included; PostgreSQL: the database's size)."""
    if is_pg(conn):
        return db_bytes(conn)
    return int(conn.execute("PRAGMA page_count").fetchone()[0]) * int(conn.execute("PRAGMA page_size").fetchone()[0])


def check_boundary(before_ms: int, now_ms: int, what: str = "--before") -> None:
    """``UsageError`` unless ``before_ms`` is a UTC midnight no later than today's."""
    if before_ms % DAY_MS:
        raise UsageError(f"{what}: must be a date (a UTC midnight), got {iso_utc(before_ms)}")
    today = now_ms - now_ms % DAY_MS
    if before_ms > today:
        raise UsageError(f"{what}: only whole past days can be pruned: {iso_utc(before_ms)[:10]} is after"
                         f" today ({iso_utc(today)[:10]})")


def _chunked(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...],
             progress: Callable[[int], None] | None) -> int:
    done = 0
    while True:
        with transaction(conn):
            n = conn.execute(sql, args).rowcount
        if n <= 0:
            return done
        done += n
        if progress is not None:
            progress(done)


def prune_rows(conn: sqlite3.Connection, before_ms: int, now_ms: int, *, dry_run: bool = False,
               chunk: int = CHUNK_ROWS, progress: Callable[[int], None] | None = None) -> PruneResult:
    """Delete raw rows with ``ts_ms < before_ms`` (their roll-ups stay) and reclaim the space."""
    check_boundary(before_ms, now_ms)
    size = db_bytes(conn)
    if dry_run:
        n = int(conn.execute("SELECT COUNT(*) FROM ledger WHERE ts_ms < ?", (before_ms,)).fetchone()[0])
        return PruneResult(before_ms, n, 0, size, size, True)
    rollups.catch_up(conn)
    with transaction(conn):
        old = rollups.pruned_before(conn)
        rollups.set_meta(conn, rollups.META_PRUNED, max(before_ms, old or 0))
        upto = rollups.rolled_up_to(conn)
    n = _chunked(conn, "DELETE FROM ledger WHERE id IN (SELECT id FROM ledger WHERE ts_ms < ? AND id <= ?"
                 f" LIMIT {int(chunk)})", (before_ms, upto), progress)
    reclaim(conn)
    return PruneResult(before_ms, n, 0, size, db_bytes(conn), False)


_HAS_BODY = "(request_body IS NOT NULL OR response_body IS NOT NULL)"


def prune_bodies(conn: sqlite3.Connection, before_ms: int, *, dry_run: bool = False, chunk: int = CHUNK_ROWS,
                 progress: Callable[[int], None] | None = None) -> int:
    """Erase the logged request and response bodies of rows with ``ts_ms < before_ms`` (the rows
    and every number in them stay). Resumes from where the last run stopped (a recorded boundary),
    so a daily run reads only the new day."""
    start = rollups.meta(conn, rollups.META_BODIES_PRUNED) or 0
    if before_ms <= start:
        return 0
    if dry_run:
        return int(conn.execute(f"SELECT COUNT(*) FROM ledger WHERE ts_ms >= ? AND ts_ms < ? AND {_HAS_BODY}",
                                (start, before_ms)).fetchone()[0])
    n = _chunked(conn, "UPDATE ledger SET request_body = NULL, response_body = NULL WHERE id IN (SELECT id"
                 f" FROM ledger WHERE ts_ms >= ? AND ts_ms < ? AND {_HAS_BODY} LIMIT {int(chunk)})",
                 (start, before_ms), progress)
    with transaction(conn):
        rollups.set_meta(conn, rollups.META_BODIES_PRUNED, before_ms)
    reclaim(conn)
    return n


def auto_vacuum(conn: sqlite3.Connection) -> str:
    if is_pg(conn):
        return "postgresql"  # autovacuum reuses the space of deleted rows; the server owns the files
    return {0: "none", 1: "full", 2: "incremental"}.get(int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]), "?")


def reclaim(conn: sqlite3.Connection, *, full: bool = False, pages: int = VACUUM_PAGES) -> bool:
    """Give free pages back to the file system: chunk by chunk on an incremental-vacuum database;
    ``full``: convert an older database with one ``VACUUM`` (holds the write lock while it runs:
    for a quiet moment). Returns whether the file could shrink. PostgreSQL: nothing to do here
    (autovacuum makes the space reusable), False."""
    if is_pg(conn):
        return False
    if full and auto_vacuum(conn) != "incremental":
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    if auto_vacuum(conn) != "incremental":
        return False
    while int(conn.execute("PRAGMA freelist_count").fetchone()[0]) > 0:
        with transaction(conn):
            conn.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.OperationalError:  # busy: the next checkpoint (the daemon's) shrinks the WAL
        pass
    return True
