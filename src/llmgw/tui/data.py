"""The read side of ``llmgw top``: what the dashboard shows, as plain dicts (no Textual here).

Owns the dashboard's queries: per customer (and, drilled down, per team and key) the spend in the
current window against the binding budget, requests and errors in that window, cache hit rate,
requests in the last minute and cost per clock hour; and the latest ledger rows for the live tail.

Invariants:
- Only reads. ``snapshot`` runs every query in one read transaction on a ``mode=ro`` connection,
  so one refresh shows one consistent picture and never blocks the daemon's writer (WAL).
- Every time comes from the ``now_ms`` argument (the app's injectable clock), never the wall clock.
- Spend follows ``governance.budgets``: a scope with budgets is measured in the window of its most
  used budget (``budget_report``: ``ts_ms >= window start``); one without is measured this UTC
  calendar month. Money stays integer nano-dollars. History is read through ``store.rollups``
  (roll-ups for whole hours and days, raw rows only past the roll-up watermark), so a refresh costs
  the same after a day or after a year of traffic.
- A row is an error as in ``store.ledger``: ``status >= 400`` or ``error_type`` set. A cache lookup is
  a row whose ``cache`` column is set; a hit is one whose value starts with ``hit`` (``hit-exact``,
  ``hit-semantic``). With no lookups the hit rate is ``None`` (shown as a dash), not 0.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .. import reports
from ..errors import NotFound
from ..governance import budgets as bud
from ..store import db, rollups
from ..units import PERIODS, window

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
SPARK_HOURS = 10
DETAIL_SPARK_HOURS = 24
TAIL_ROWS = 50
NO_BUDGET_PERIOD = "month"

_COLUMN = {"customer": "customer_id", "team": "team_id", "key": "key_id"}
_PERIOD_ORDER = {p: i for i, p in enumerate(PERIODS)}  # day < week < month < total


def open_readonly(path: Path) -> sqlite3.Connection:
    """A ``mode=ro`` connection to the database at ``path``; ``NotFound`` when there is none."""
    if not Path(path).exists():
        raise NotFound(f"no database at {path}: nothing recorded yet (check --home / $LLMGW_HOME)")
    return db.connect(Path(path), readonly=True)


def level(spent: int, limit: int, warn_pct: int) -> str:
    """``ok``, ``warn`` (spent reached ``warn_pct`` % of the limit) or ``cap`` (reached the limit).

    Nothing spent is always ``ok`` (as ``budgets`` treats it: an empty budget warns once used)."""
    if spent <= 0:
        return "ok"
    if spent >= limit:
        return "cap"
    if spent * 100 >= limit * warn_pct:
        return "warn"
    return "ok"


def _binding_budgets(conn: sqlite3.Connection, scope: str, ids: list[str], now_ms: int) -> dict[str, dict[str, Any]]:
    """For each id of ``scope`` with budgets: its most used budget now (ties: the shorter period)."""
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = conn.execute(f"SELECT * FROM budgets WHERE scope = ? AND scope_id IN ({marks})"
                        " ORDER BY scope_id, period", (scope, *ids)).fetchall()
    best: dict[str, dict[str, Any]] = {}
    for r in bud.budget_report(conn, rows, now_ms):
        limit, spent = int(r["limit_nanos"]), int(r["spent_nanos"])
        b = {
            "id": r["id"], "period": r["period"], "hard": bool(r["hard"]), "limit_nanos": limit,
            "warn_pct": int(r["warn_pct"]), "spent_nanos": spent, "utilisation_pct": int(r["utilisation_pct"]),
            "level": level(spent, limit, int(r["warn_pct"])), "resets": r["resets"],
        }
        old = best.get(r["scope_id"])
        # compare spent/limit exactly: a*d > c*b  <=>  a/b > c/d for positive limits
        if old is None or _more_used(b, old):
            best[r["scope_id"]] = b
    return best


def _more_used(a: dict[str, Any], b: dict[str, Any]) -> bool:
    la, lb = max(a["limit_nanos"], 1), max(b["limit_nanos"], 1)
    ua, ub = a["spent_nanos"] * lb, b["spent_nanos"] * la
    if ua != ub:
        return ua > ub
    return _PERIOD_ORDER[a["period"]] < _PERIOD_ORDER[b["period"]]


def _window_stats(conn: sqlite3.Connection, column: str, ids: list[str], since_ms: int) -> dict[str, dict[str, int]]:
    sql, params = rollups.grouped(conn, since_ms, None, [column], [
        ("requests", "SUM", "requests"), ("spent_nanos", "SUM", "cost_nanos"), ("errors", "SUM", "errors"),
        ("cache_lookups", "SUM", "CASE WHEN cache IS NOT NULL THEN requests ELSE 0 END"),
        ("cache_hits", "SUM", "CASE WHEN cache LIKE 'hit%' THEN requests ELSE 0 END"), ("last_ms", "MAX", "last_ms"),
    ], {column: ids})
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return {r[0]: {k: (r[i] or 0) if k != "last_ms" else r[i] for i, k in enumerate(names) if i}
            for r in cur}


def _recent(conn: sqlite3.Connection, column: str, now_ms: int) -> dict[str, int]:
    """Requests per id in the minute up to ``now_ms``."""
    cur = conn.execute(f"SELECT {column}, COUNT(*) FROM ledger WHERE ts_ms > ? AND ts_ms <= ?"
                       f" AND {column} IS NOT NULL GROUP BY {column}", (now_ms - MINUTE_MS, now_ms))
    return {r[0]: int(r[1]) for r in cur}


def hour_buckets(now_ms: int, hours: int) -> tuple[int, int]:
    """``(start_ms, end_ms)`` of the last ``hours`` whole clock hours, the current one included."""
    end = (now_ms // HOUR_MS + 1) * HOUR_MS
    return end - hours * HOUR_MS, end


def _hourly(conn: sqlite3.Connection, column: str, now_ms: int, hours: int,
            only: str | None = None) -> dict[str, list[int]]:
    """Cost per clock hour (oldest first, the current hour last) for each id of ``column``."""
    start, end = hour_buckets(now_ms, hours)
    # every row of an hourly source lies within one clock hour, and so does its last_ms
    sql, params = rollups.grouped(conn, start, end, [column, f"(last_ms - {int(start)}) / {HOUR_MS}"],
                                  [("cost", "SUM", "cost_nanos")], {column: only} if only is not None else None,
                                  hourly=True)
    out: dict[str, list[int]] = {}
    for sid, h, cost in conn.execute(sql, params):
        if sid is not None:
            out.setdefault(sid, [0] * hours)[int(h)] = int(cost or 0)
    return out


def scope_rows(conn: sqlite3.Connection, scope: str, items: list[dict[str, Any]], now_ms: int) -> list[dict[str, Any]]:
    """``items`` (dicts with an ``id``) of ``scope`` with their window, spend, budget and counts added.

    Adds: ``period`` and ``since_ms`` (the window measured), ``spent_nanos``, ``requests``, ``errors``,
    ``cache_lookups``, ``cache_hits``, ``cache_hit_rate`` (None without lookups), ``last_ms`` and
    ``budget`` (the binding budget, or None)."""
    column = _COLUMN[scope]
    ids = [it["id"] for it in items]
    budgets = _binding_budgets(conn, scope, ids, now_ms)
    by_since: dict[int, list[str]] = {}
    period_of: dict[str, str] = {}
    for i in ids:
        period_of[i] = budgets[i]["period"] if i in budgets else NO_BUDGET_PERIOD
        by_since.setdefault(window(period_of[i], now_ms)[0], []).append(i)
    stats: dict[str, dict[str, Any]] = {}
    for since, group in by_since.items():
        for sid, st in _window_stats(conn, column, group, since).items():
            stats[sid] = {**st, "since_ms": since}
    out = []
    for it in items:
        i = it["id"]
        st = stats.get(i, {"requests": 0, "spent_nanos": 0, "errors": 0, "cache_lookups": 0, "cache_hits": 0,
                           "last_ms": None})
        lookups, hits = int(st["cache_lookups"]), int(st["cache_hits"])
        out.append({
            **it, "period": period_of[i], "since_ms": window(period_of[i], now_ms)[0],
            "spent_nanos": int(st["spent_nanos"]), "requests": int(st["requests"]), "errors": int(st["errors"]),
            "cache_lookups": lookups, "cache_hits": hits, "cache_hit_rate": hits / lookups if lookups else None,
            "last_ms": st["last_ms"], "budget": budgets.get(i),
        })
    return out


def customers(conn: sqlite3.Connection, now_ms: int, *, spark_hours: int = SPARK_HOURS) -> list[dict[str, Any]]:
    """Every defined customer (by id) with ``scope_rows``'s fields, ``rpm`` (requests in the last
    minute) and ``cost_per_hour`` (nano-dollars per clock hour, the last ``spark_hours``)."""
    items = [{"id": r["id"], "name": r["name"]} for r in conn.execute("SELECT id, name FROM customers ORDER BY id")]
    rows = scope_rows(conn, "customer", items, now_ms)
    rpm = _recent(conn, "customer_id", now_ms)
    hourly = _hourly(conn, "customer_id", now_ms, spark_hours)
    for r in rows:
        r["rpm"] = rpm.get(r["id"], 0)
        r["cost_per_hour"] = hourly.get(r["id"], [0] * spark_hours)
    return rows


def customer_detail(conn: sqlite3.Connection, customer_id: str, now_ms: int, *,
                    spark_hours: int = DETAIL_SPARK_HOURS) -> dict[str, Any]:
    """One customer (``customers`` fields over ``spark_hours``) with its teams and keys, each with
    ``scope_rows``'s fields; ``NotFound`` for an unknown customer."""
    row = conn.execute("SELECT id, name FROM customers WHERE id = ?", (customer_id,)).fetchone()
    if row is None:
        raise NotFound(f"no customer {customer_id!r}")
    cust = scope_rows(conn, "customer", [{"id": row["id"], "name": row["name"]}], now_ms)[0]
    cust["rpm"] = _recent(conn, "customer_id", now_ms).get(customer_id, 0)
    cust["cost_per_hour"] = _hourly(conn, "customer_id", now_ms, spark_hours, only=customer_id).get(
        customer_id, [0] * spark_hours)
    teams = [dict(r) for r in conn.execute(
        "SELECT t.id, t.name, (SELECT COUNT(*) FROM keys k WHERE k.team_id = t.id) AS keys"
        " FROM teams t WHERE t.customer_id = ? ORDER BY t.id", (customer_id,))]
    keys = [dict(r) for r in conn.execute(
        "SELECT id, name, display, status, team_id, created_at FROM keys WHERE customer_id = ?"
        " ORDER BY created_at, rowid", (customer_id,))]
    return {"customer": cust, "teams": scope_rows(conn, "team", teams, now_ms),
            "keys": scope_rows(conn, "key", keys, now_ms)}


def tail(conn: sqlite3.Connection, n: int = TAIL_ROWS) -> list[dict[str, Any]]:
    """The latest ``n`` ledger rows (no bodies), newest first, as ``reports.tail_rows`` gives them."""
    return list(reversed(reports.tail_rows(conn, last=n)))


def snapshot(conn: sqlite3.Connection, now_ms: int, *, customer_id: str | None = None,
             tail_rows: int = TAIL_ROWS) -> dict[str, Any]:
    """Everything one refresh shows, read in one transaction: ``customers``, ``tail``, ``last_id`` and,
    with ``customer_id``, ``detail`` (``customer_detail``; None when that customer is gone)."""
    conn.execute("BEGIN")
    try:
        out: dict[str, Any] = {
            "now_ms": now_ms, "customers": customers(conn, now_ms), "tail": tail(conn, tail_rows),
            "last_id": reports.last_id(conn), "detail": None,
        }
        if customer_id is not None:
            try:
                out["detail"] = customer_detail(conn, customer_id, now_ms)
            except NotFound:
                pass
        return out
    finally:
        conn.rollback()
