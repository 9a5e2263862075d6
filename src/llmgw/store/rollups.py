"""Ledger roll-ups: hourly, daily and monthly aggregates that make history cost nothing to read.

Owns: the ``ledger_hourly`` / ``ledger_daily`` / ``ledger_monthly`` tables and ``ledger_meta``
(created by migration ``m007_rollups``), the roll-up step the writer process runs (``Roller``,
``step``), the catch-up from raw rows, ``rebuild``/``verify``, and ``grouped``: the one query every
reader of history (reports, budget spend, ``top``, the finance page) aggregates over.

Invariants:
- Roll-ups are derived data. The ledger is the source of truth for every hour that still has its
  raw rows; below ``pruned_before`` (the retention boundary, a UTC midnight) only roll-ups remain.
- A watermark (``ledger_meta.rolled_up_to_id``) says which rows they hold: every id up to it, none
  after. ``step`` adds the next ids and moves the watermark in one transaction; readers read the
  rows past it raw, in the same statement as the roll-ups, so no row is missed or counted twice.
  Ledger rows are append-only; prune deletes raw rows (only rolled-up ones) and keeps their roll-ups.
- A group is (start, customer, team, key, model, provider, status class, cache outcome, error type,
  error code); NULL dimensions are stored as ``''`` (a unique key does not match NULLs) and read back
  as NULL. Every measure is an integer, so a sum over roll-ups equals the raw ``SUM`` exactly.
- ``grouped(since, until, ...)`` covers the half-open window with the coarsest pieces that fit: whole
  UTC days from ``ledger_daily``, whole hours at the day edges from ``ledger_hourly``, and raw rows
  only for the partial hours at the window edges. A window edge inside a pruned partial hour cannot
  be answered exactly: ``UsageError``, never a guess.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ResourceError, UsageError
from ..units import DAY_MS, iso_utc, window
from .conn import is_pg
from .db import transaction

log = logging.getLogger("llmgw.ledger")

HOUR_MS = 3_600_000
TABLES = {"hour": "ledger_hourly", "day": "ledger_daily", "month": "ledger_monthly"}
#: group dimensions, in primary-key order after ``start_ms``
DIMS = ("customer_id", "team_id", "key_id", "model", "provider", "status_class", "cache", "error_type",
        "error_code")
TEXT_DIMS = tuple(d for d in DIMS if d != "status_class")
#: summed measures (all integers); ``last_ms`` (latest ``ts_ms``) is kept as a MAX
MEASURES = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
            "cost_nanos", "saved_nanos")
#: what a raw ledger row contributes to each measure
_RAW_MEASURE = {
    "requests": "1", "errors": "(status >= 400 OR error_type IS NOT NULL)",
    **{m: m for m in MEASURES if m not in ("requests", "errors")},
}
_RAW_DIM = {d: f"COALESCE({d}, '')" for d in TEXT_DIMS} | {"status_class": "status / 100"}
META_ROLLED = "rolled_up_to_id"
META_PRUNED = "pruned_before_ms"
META_BODIES_PRUNED = "bodies_pruned_before_ms"


# ---- schema (used by the migration) ----------------------------------------------------------------


def _table_sql(table: str) -> list[str]:
    dims = ", ".join(f"{d} {'INTEGER' if d == 'status_class' else 'TEXT'} NOT NULL" for d in DIMS)
    measures = ", ".join(f"{m} INTEGER NOT NULL" for m in MEASURES)
    # clustered by time: every reader scans a time range (secondary indexes would cost the
    # roll-up step more than they save the readers, who group many ids in one scan)
    return [f"CREATE TABLE {table} (start_ms INTEGER NOT NULL, {dims}, {measures}, last_ms INTEGER NOT NULL,"
            f" PRIMARY KEY (start_ms, {', '.join(DIMS)})) WITHOUT ROWID"]


def schema_sql() -> list[str]:
    """The tables and the meta table (no data): migration ``m007_rollups``'s schema. Frozen once
    released: a change to it is a new migration."""
    return [*(_table_sql(t)[0] for t in TABLES.values()),
            "CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"]


def _month_sql(ms: str, pg: bool = False) -> str:
    """SQL for the UTC calendar month start (epoch ms) of the epoch-ms expression ``ms``."""
    if pg:
        return (f"CAST(EXTRACT(EPOCH FROM date_trunc('month', to_timestamp(({ms}) / 1000) AT TIME ZONE 'UTC'))"
                " AS BIGINT) * 1000")
    return f"CAST(strftime('%s', ({ms}) / 1000, 'unixepoch', 'start of month') AS INTEGER) * 1000"


def _measure(m: str, pg: bool) -> str:
    """What a raw ledger row contributes to measure ``m`` (PostgreSQL: the error test as 0/1, not a boolean)."""
    if pg and m == "errors":
        return f"CAST({_RAW_MEASURE[m]} AS INTEGER)"
    return _RAW_MEASURE[m]


def _upsert(table: str, pg: bool) -> str:
    """``ON CONFLICT`` adding a group's measures to its row of ``table`` (PostgreSQL names the key,
    qualifies the old row's columns and says GREATEST)."""
    if pg:
        sets = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in MEASURES)
        return (f" ON CONFLICT (start_ms, {', '.join(DIMS)}) DO UPDATE SET {sets},"
                f" last_ms = GREATEST({table}.last_ms, excluded.last_ms)")
    sets = ", ".join(f"{m} = {m} + excluded.{m}" for m in MEASURES)
    return f" ON CONFLICT DO UPDATE SET {sets}, last_ms = max(last_ms, excluded.last_ms)"


# ---- rolling up ------------------------------------------------------------------------------------


def _aggregate(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> None:
    """Add the raw rows matching ``where`` to both tables: one GROUP BY over the raw rows into an
    hourly scratch table, upserted into ``ledger_hourly`` and, grouped by day, into ``ledger_daily``
    (the raw rows are read once)."""
    pg = is_pg(conn)
    dims = ", ".join(f"{_RAW_DIM[d]}" for d in DIMS)
    sums = ", ".join(f"SUM({_measure(m, pg)})" for m in MEASURES)
    group = ", ".join(str(i) for i in range(1, len(DIMS) + 2))
    cols = f"start_ms, {', '.join(DIMS)}, {', '.join(MEASURES)}, last_ms"
    scratch = "pg_temp.rollup_scratch" if pg else "temp.rollup_scratch"
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS rollup_scratch AS SELECT {cols} FROM {TABLES['hour']}"
                 f" WHERE {'false' if pg else '0'}")
    conn.execute(f"DELETE FROM {scratch}")
    conn.execute(f"INSERT INTO {scratch} ({cols}) SELECT ts_ms - ts_ms % {HOUR_MS}, {dims}, {sums},"
                 f" MAX(ts_ms) FROM ledger WHERE {where} GROUP BY {group}", args)
    # "WHERE true": an upsert's SELECT needs a WHERE, or ON CONFLICT would parse as a join constraint
    conn.execute(f"INSERT INTO {TABLES['hour']} ({cols}) SELECT {cols} FROM {scratch} WHERE true{_upsert(TABLES['hour'], pg)}")
    for table, start in ((TABLES["day"], f"start_ms - start_ms % {DAY_MS}"),
                         (TABLES["month"], _month_sql("start_ms", pg))):
        conn.execute(f"INSERT INTO {table} ({cols}) SELECT {start}, {', '.join(DIMS)},"
                     f" {', '.join(f'SUM({m})' for m in MEASURES)}, MAX(last_ms) FROM {scratch}"
                     f" GROUP BY {group}{_upsert(table, pg)}")
    conn.execute(f"DELETE FROM {scratch}")


def rolled_up_to(conn: sqlite3.Connection) -> int:
    """The highest ledger id whose row is in the roll-ups (every lower id is too)."""
    return meta(conn, META_ROLLED) or 0


def step(conn: sqlite3.Connection, max_rows: int = 100_000) -> int:
    """Roll up the next ``max_rows`` ids past the watermark; returns how many ids it covered (0: none
    pending). In the caller's write transaction: the roll-up rows and the watermark move together."""
    done = rolled_up_to(conn)
    top = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM ledger").fetchone()[0])
    upto = min(top, done + max_rows)
    if upto <= done:
        return 0
    _aggregate(conn, "id > ? AND id <= ?", (done, upto))
    set_meta(conn, META_ROLLED, upto)
    return upto - done


def pending(conn: sqlite3.Connection) -> int:
    """Ledger ids not rolled up yet (an upper bound: ids may have gaps)."""
    top = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM ledger").fetchone()[0])
    return max(0, top - rolled_up_to(conn))


def catch_up(conn: sqlite3.Connection, *, chunk: int = 250_000,
             progress: Callable[[int, int], None] | None = None) -> int:
    """Roll up everything pending, one transaction per ``chunk`` ids (the writer is never held for
    long); ``progress(done, total)`` after each. Returns the ids covered."""
    total, done = pending(conn), 0
    while True:
        with transaction(conn):
            n = step(conn, chunk)
        if not n:
            return done
        done += n
        if progress is not None:
            progress(done, total)


class Roller:
    """When the ledger writer process rolls up: right after a commit once ``interval`` seconds
    have passed since the last roll-up, and when it goes idle (``idle_wait``: how long the writer may
    block waiting for rows before it should roll up what it committed). Each roll-up is one short
    transaction of at most ``max_rows`` ids, so the writer is never held for long."""

    def __init__(self, conn: sqlite3.Connection | None, *, interval: float = 0.5, max_rows: int = 50_000,
                 connect: Callable[[], Any] | None = None) -> None:
        # conn None: made by ``connect`` when first needed (a PostgreSQL writer started while the
        # server was unreachable)
        self.conn, self.interval, self.max_rows, self.connect = conn, interval, max_rows, connect
        self.dirty = True  # rows may be pending from before this process
        self._last = 0.0
        self._failing = False  # one warning per streak of failed steps, not one per attempt

    def committed(self) -> None:
        self.dirty = True
        if time.monotonic() - self._last >= self.interval:
            self.run()

    def idle_wait(self) -> float | None:
        return self.interval if self.dirty else None

    def run(self) -> None:
        self._last = time.monotonic()
        try:
            if self.conn is None:
                if self.connect is None:
                    return
                self.conn = self.connect()
            with transaction(self.conn):
                n = step(self.conn, self.max_rows)
        except (sqlite3.Error, ResourceError) as e:  # e.g. locked or disk full: the rows are safe, try again later
            if not self._failing:
                log.warning("ledger roll-up step failed (will retry): %s", e)
            self._failing = True
            return
        if self._failing:
            log.warning("ledger roll-up steps work again")
        self._failing = False
        self.dirty = n >= self.max_rows


def pruned_before(conn: sqlite3.Connection) -> int | None:
    """The retention boundary: raw rows before it were deleted (their roll-ups stay); None if never."""
    return meta(conn, META_PRUNED)


def meta(conn: sqlite3.Connection, key: str) -> int | None:
    try:
        row = conn.execute("SELECT value FROM ledger_meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:  # a database from before roll-ups, read without migrating
        return None
    return None if row is None else int(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute("INSERT INTO ledger_meta (key, value) VALUES (?, ?)"
                 " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


def rebuild(conn: sqlite3.Connection) -> int:
    """Recompute the roll-ups of every hour that still has its raw rows (from ``pruned_before``
    on; older roll-ups are all that is left of their hours and are kept), up to the watermark;
    the months from the boundary's month on are re-summed from the daily rows (a month that was
    partly pruned keeps its pruned days through them). In the caller's transaction; returns the
    first ``start_ms`` rebuilt (0: everything)."""
    since = pruned_before(conn) or 0
    for table in (TABLES["hour"], TABLES["day"]):
        conn.execute(f"DELETE FROM {table} WHERE start_ms >= ?", (since,))
    month = window("month", since)[0] if since else 0
    conn.execute(f"DELETE FROM {TABLES['month']} WHERE start_ms >= ?", (month,))
    # what _aggregate adds for the hours from `since`, plus the daily rows of the boundary month before it
    _aggregate(conn, "ts_ms >= ? AND id <= ?", (since, rolled_up_to(conn)))
    if month < since:
        pg = is_pg(conn)
        cols = f"start_ms, {', '.join(DIMS)}, {', '.join(MEASURES)}, last_ms"
        conn.execute(f"INSERT INTO {TABLES['month']} ({cols}) SELECT {month}, {', '.join(DIMS)},"
                     f" {', '.join(f'SUM({m})' for m in MEASURES)}, MAX(last_ms) FROM {TABLES['day']}"
                     f" WHERE start_ms >= ? AND start_ms < ? GROUP BY {', '.join(DIMS)}"
                     f"{_upsert(TABLES['month'], pg)}", (month, since))
    return since


@dataclass(frozen=True)
class Mismatch:
    day_ms: int
    measure: str
    raw: int
    rolled: int

    def __str__(self) -> str:
        return f"{iso_utc(self.day_ms)[:10]}: {self.measure} raw {self.raw} != roll-up {self.rolled}"


def verify(conn: sqlite3.Connection) -> list[Mismatch]:
    """Compare the roll-up tables with the raw ``SUM`` of the rows they cover, per day (per month
    for the monthly table), over what still has raw rows and ids up to the watermark. Run it in
    one read transaction."""
    since, upto = pruned_before(conn) or 0, rolled_up_to(conn)
    month = window("month", since)[0] if since else 0
    pg = is_pg(conn)
    sums = ", ".join(f"SUM({_measure(m, pg)})" for m in MEASURES)
    rsums = ", ".join(f"SUM({m})" for m in MEASURES)
    out: list[Mismatch] = []
    zero = (0,) * len(MEASURES)
    for table, raw_key, key, lo in (
            (TABLES["hour"], f"ts_ms - ts_ms % {DAY_MS}", f"start_ms - start_ms % {DAY_MS}", since),
            (TABLES["day"], f"ts_ms - ts_ms % {DAY_MS}", "start_ms", since),
            (TABLES["month"], _month_sql("ts_ms", pg), "start_ms", month)):
        # a month that was partly pruned is checked against its daily rows for the pruned days
        raw = {r[0]: list(r[1:]) for r in conn.execute(
            f"SELECT {raw_key}, {sums} FROM ledger WHERE ts_ms >= ? AND id <= ? GROUP BY 1", (max(lo, since), upto))}
        if lo < since:
            for r in conn.execute(f"SELECT {lo}, {rsums} FROM {TABLES['day']} WHERE start_ms >= ? AND start_ms < ?",
                                  (lo, since)):
                raw[lo] = [int(a or 0) + int(b or 0) for a, b in zip(raw.get(lo, zero), r[1:], strict=True)]
        rolled = {r[0]: r[1:] for r in conn.execute(
            f"SELECT {key}, {rsums} FROM {table} WHERE start_ms >= ? GROUP BY 1", (lo,))}
        for bucket in sorted(raw.keys() | rolled.keys()):
            a, b = raw.get(bucket, zero), rolled.get(bucket, zero)
            out += [Mismatch(bucket, f"{table}.{m}", int(x or 0), int(y or 0))
                    for m, x, y in zip(MEASURES, a, b, strict=True) if int(x or 0) != int(y or 0)]
    return out


def available(conn: sqlite3.Connection) -> bool:
    """True when the roll-up tables exist (a database migrated to m007 or later)."""
    if is_pg(conn):
        return conn.execute("SELECT to_regclass(?)", (TABLES["day"],)).fetchone()[0] is not None
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (TABLES["day"],)).fetchone() is not None


# ---- reading: one window as roll-up-shaped rows -----------------------------------------------------


Span = tuple[str, int | None, int | None]  # (source: raw | hour | day | month, since_ms, until_ms)


def _ceil(ms: int, unit: int) -> int:
    return -(-ms // unit) * unit


def _month_start(ms: int) -> int:
    return window("month", ms)[0]


def spans(since_ms: int | None, until_ms: int | None) -> list[Span]:
    """The pieces that cover ``since_ms <= ts < until_ms`` (None: open), coarsest first where they
    fit: raw rows for partial hours, hourly rows for partial days, daily rows for partial UTC
    calendar months, monthly rows for the whole months between."""
    s, u = since_ms, until_ms
    if s is not None and u is not None and s >= u:
        return []
    out: list[Span] = []
    levels: tuple[tuple[str, Callable[[int], int], Callable[[int], int]], ...] = (
        ("raw", lambda t: t - t % HOUR_MS, lambda t: _ceil(t, HOUR_MS)),
        ("hour", lambda t: t - t % DAY_MS, lambda t: _ceil(t, DAY_MS)),
        ("day", _month_start, lambda t: t if _month_start(t) == t else window("month", t)[1] or t),
    )
    for source, floor, ceil in levels:
        if s is not None and floor(s) != s:
            edge = ceil(s)
            if u is not None and u <= edge:
                out.append((source, s, u))
                return out
            out.append((source, s, edge))
            s = edge
        if u is not None and floor(u) != u:
            edge = floor(u)
            if s is None or edge > s:
                out.append((source, edge, u))
                u = edge
            else:
                out.append((source, s, u))
                return out
    if s is None or u is None or s < u:
        out.append(("month", s, u))
    return out


Filter = Mapping[str, str | Sequence[str]]


def _where(time_col: str, since: int | None, until: int | None, filters: Filter, params: list[Any]) -> str:
    clauses = []
    if since is not None:
        clauses.append(f"{time_col} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{time_col} < ?")
        params.append(until)
    for col, value in filters.items():
        if isinstance(value, str):
            clauses.append(f"{col} = ?")
            params.append(value)
        else:
            clauses.append(f"{col} IN ({', '.join('?' for _ in value)})")
            params.extend(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


def _branches(conn: sqlite3.Connection, since_ms: int | None, until_ms: int | None, filters: Filter | None,
              hourly: bool) -> list[tuple[str, list[Any]]]:
    """The window as SELECTs of roll-up-shaped rows (``DIMS`` with NULL for ``''``, ``MEASURES``,
    ``last_ms``), each with its own parameters: sums over them equal the raw ledger's in the window.

    ``filters``: dimension -> id or ids. ``hourly``: no row spans more than a clock hour (for per-hour
    buckets: bucket by ``last_ms``, which lies in the row's hour). Raw rows alone on a database
    without roll-ups (read-only readers do not migrate)."""
    filters = filters or {}
    if not available(conn):
        pieces: Iterable[Span] = [("raw", since_ms, until_ms)]
    else:
        pieces = [("hour" if hourly and src != "raw" else src, lo, hi) for src, lo, hi in spans(since_ms, until_ms)]
        boundary = pruned_before(conn)
        for src, lo, _ in pieces:
            if src == "raw" and boundary is not None and (lo is None or lo < boundary):
                raise UsageError(f"raw ledger rows before {iso_utc(boundary)} were pruned: only whole hours"
                                 f" can be reported there (the window starts or ends at {iso_utc(lo or 0)})")
    raw_dims = ", ".join(d if d != "status_class" else "status / 100 AS status_class" for d in DIMS)
    raw_sums = ", ".join(f"{_measure(m, is_pg(conn))} AS {m}" for m in MEASURES)
    raw_select = f"SELECT {raw_dims}, {raw_sums}, ts_ms AS last_ms FROM ledger"
    out: list[tuple[str, list[Any]]] = []
    rolled: list[Span] = []
    for src, lo, hi in pieces:
        params: list[Any] = []
        if src == "raw":
            out.append((raw_select + _where("ts_ms", lo, hi, filters, params), params))
        else:
            rolled.append((src, lo, hi))
            dims = ", ".join(f"NULLIF({d}, '') AS {d}" if d in TEXT_DIMS else d for d in DIMS)
            where = _where("start_ms", lo, hi, filters, params)
            out.append((f"SELECT {dims}, {', '.join(MEASURES)}, last_ms FROM {TABLES[src]}{where}", params))
    if rolled:
        # rows past the watermark are not in the roll-ups yet: read them raw. The watermark is read
        # in this same statement, so it and the roll-ups come from one snapshot (never counted twice)
        params = []
        lo = None if any(p[1] is None for p in rolled) else min(p[1] for p in rolled if p[1] is not None)
        hi = None if any(p[2] is None for p in rolled) else max(p[2] for p in rolled if p[2] is not None)
        where = _where("ts_ms", lo, hi, filters, params)
        tail = f"id > (SELECT COALESCE(MAX(value), 0) FROM ledger_meta WHERE key = '{META_ROLLED}')"
        # NOT INDEXED: read the tail by rowid range (a few rows), never through a time or customer
        # index that would walk the whole window's raw rows to find them
        tail_select = raw_select.replace(" FROM ledger", " FROM ledger NOT INDEXED")
        out.append((tail_select + (f"{where} AND {tail}" if where else f" WHERE {tail}"), params))
    return out


#: an aggregate column of ``grouped``: (name, SUM or MAX, expression over roll-up-shaped columns)
Agg = tuple[str, str, str]


def grouped(conn: sqlite3.Connection, since_ms: int | None, until_ms: int | None, group: Sequence[str],
            aggs: Sequence[Agg], filters: Filter | None = None, *, hourly: bool = False) -> tuple[str, list[Any]]:
    """A query (SQL, params) of ``group`` expressions (named ``g0``, ``g1``...) and the ``aggs``
    over the window, like ``SELECT group, aggs FROM source GROUP BY group`` but aggregated inside
    each piece first, so the big roll-up scans are plain grouped scans (about 5x faster than
    grouping their union). Only SUM and MAX, which combine across pieces exactly."""
    for _, func, _ in aggs:
        if func not in ("SUM", "MAX"):
            raise ValueError(f"grouped: {func} does not combine across pieces")
    keys = ", ".join(f"{g} AS g{i}" for i, g in enumerate(group))
    inner = ", ".join(f"{func}({expr}) AS {name}" for name, func, expr in aggs)
    by = f" GROUP BY {', '.join(f'g{i}' for i in range(len(group)))}" if group else ""
    parts, params = [], []
    for sql, ps in _branches(conn, since_ms, until_ms, filters, hourly):
        parts.append(f"SELECT {keys + ', ' if keys else ''}{inner} FROM ({sql}) AS piece{by}")
        params += ps
    outer_keys = ", ".join(f"g{i}" for i in range(len(group)))
    outer = ", ".join(f"{func}({name}) AS {name}" for name, func, _ in aggs)
    return (f"SELECT {outer_keys + ', ' if outer_keys else ''}{outer} FROM ({' UNION ALL '.join(parts)}) AS pieces{by}",
            params)
