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
from ..store.conn import PgStore, Target
from ..units import PERIODS, window

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
SPARK_HOURS = 10
DETAIL_SPARK_HOURS = 24
TAIL_ROWS = 50
NO_BUDGET_PERIOD = "month"

_COLUMN = {"customer": "customer_id", "team": "team_id", "key": "key_id"}
_PERIOD_ORDER = {p: i for i, p in enumerate(PERIODS)}  # day < week < month < total


def open_readonly(path: Target) -> sqlite3.Connection:
    """A ``mode=ro`` connection to the database at ``path`` (or the PostgreSQL store); ``NotFound``
    when there is no file."""
    if isinstance(path, PgStore):
        return db.connect(path, readonly=True)
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
        add_errors_and_blocked(conn, out, now_ms)
        return out
    finally:
        conn.rollback()


# ---- why requests fail, and which keys cannot be used --------------------------------------------

#: what an error row is counted as: its code, else its type, else its HTTP status class (``http_5xx``)
_ERROR_LABEL = "COALESCE(error_code, error_type, 'http_' || status_class || 'xx')"
TOP_ERRORS = 3


def top_errors(conn: sqlite3.Connection, column: str, since: dict[str, int],
               n: int = TOP_ERRORS) -> dict[str, list[tuple[str, int]]]:
    """The ``n`` most frequent error codes (most first, ties by code) of each id in ``since`` (id →
    the start of the window it is measured in), as ``[(code, count), ...]``."""
    by_since: dict[int, list[str]] = {}
    for sid, start in since.items():
        by_since.setdefault(start, []).append(sid)
    out: dict[str, list[tuple[str, int]]] = {}
    for start, ids in by_since.items():
        # through the roll-ups (aggregated per piece): a flat cost over any history
        sql, params = rollups.grouped(conn, start, None, [column, _ERROR_LABEL], [("n", "SUM", "errors")],
                                      {column: ids})
        for sid, code, count in conn.execute(sql, params):
            if not count:
                continue
            out.setdefault(sid, []).append((str(code), int(count)))
    for codes in out.values():
        codes.sort(key=lambda c: (-c[1], c[0]))
        del codes[n:]
    return out


def exhausted_budgets(conn: sqlite3.Connection, now_ms: int) -> dict[tuple[str, str], str]:
    """``(scope, scope_id)`` → why, for every hard budget that refuses every request now: spent has
    reached the limit plus grace, and auto-raise (if any) is at its ceiling."""
    rows = conn.execute("SELECT * FROM budgets WHERE hard = 1").fetchall()
    out: dict[tuple[str, str], str] = {}
    for r in bud.budget_report(conn, rows, now_ms):
        limit = int(r["limit_nanos"])
        if int(r["spent_nanos"]) < limit + int(r["grace_nanos"]):
            continue
        if r["raise_step_nanos"] and limit < int(r["ceiling_nanos"]):
            continue  # the next request raises it
        out.setdefault((r["scope"], r["scope_id"]), f"{r['scope']} {bud.ADJECTIVE[r['period']]} budget exhausted")
    return out


def blocked_keys(conn: sqlite3.Connection, now_ms: int,
                 exhausted: dict[tuple[str, str], str] | None = None) -> dict[str, str]:
    """Key id → why every request with it is refused, for active keys: a hard budget of the key, its
    team or its customer is exhausted (``exhausted_budgets``), the key has expired, or its latest
    request was refused by a budget (its bound no longer fits what is left) with none admitted since."""
    from ..units import iso_utc

    exhausted = exhausted_budgets(conn, now_ms) if exhausted is None else exhausted
    now_iso = iso_utc(now_ms)
    out: dict[str, str] = {}
    for k in conn.execute("SELECT id, team_id, customer_id, expires_at FROM keys WHERE status = 'active'").fetchall():
        why = next((exhausted[s] for s in (("key", k["id"]), ("team", k["team_id"]), ("customer", k["customer_id"]))
                    if s in exhausted), None)
        if why is None and k["expires_at"] and k["expires_at"].replace("+00:00", "Z") <= now_iso:
            why = "expired"
        if why is None:  # one index lookup per key (ledger_key_ts), whatever the ledger's size
            last = conn.execute("SELECT error_type FROM ledger WHERE key_id = ? ORDER BY ts_ms DESC, id DESC LIMIT 1",
                                (k["id"],)).fetchone()
            if last is not None and last[0] == "budget_exceeded":
                why = "its latest request was refused by a budget"
        if why is not None:
            out[k["id"]] = why
    return out


def add_errors_and_blocked(conn: sqlite3.Connection, snap: dict[str, Any], now_ms: int) -> None:
    """Add to a snapshot's rows: ``error_codes`` (``top_errors`` in the row's window) for customers,
    teams and keys; ``blocked`` (why, or None) for keys; and for customers ``keys_active``,
    ``keys_blocked`` and ``limits``: the exhausted team and key budgets under them (their own budget
    is the row's bar), so a customer whose teams or keys are cut off does not look fine."""
    exhausted = exhausted_budgets(conn, now_ms)
    blocked = blocked_keys(conn, now_ms, exhausted)
    cs = snap["customers"]
    codes = top_errors(conn, "customer_id", {c["id"]: c["since_ms"] for c in cs})
    per_customer: dict[str, list[str]] = {}
    for k in conn.execute("SELECT id, customer_id FROM keys WHERE status = 'active' AND customer_id IS NOT NULL"):
        per_customer.setdefault(k["customer_id"], []).append(k["id"])
    team_of = {r["id"]: r["customer_id"] for r in conn.execute("SELECT id, customer_id FROM teams")}
    key_of = {r["id"]: r["customer_id"] for r in conn.execute("SELECT id, customer_id FROM keys")}
    limits: dict[str, list[str]] = {}
    for (scope, sid), _why in sorted(exhausted.items()):
        owner = team_of.get(sid) if scope == "team" else key_of.get(sid) if scope == "key" else None
        if owner is not None:
            limits.setdefault(owner, []).append(f"{scope} {sid}")
    for c in cs:
        c["error_codes"] = codes.get(c["id"], [])
        active = per_customer.get(c["id"], [])
        c["keys_active"] = len(active)
        c["keys_blocked"] = sum(1 for k in active if k in blocked)
        c["limits"] = limits.get(c["id"], [])
    detail = snap.get("detail")
    if detail is not None:
        tcodes = top_errors(conn, "team_id", {t["id"]: t["since_ms"] for t in detail["teams"]})
        for t in detail["teams"]:
            t["error_codes"] = tcodes.get(t["id"], [])
            t["capped"] = ("team", t["id"]) in exhausted
        kcodes = top_errors(conn, "key_id", {k["id"]: k["since_ms"] for k in detail["keys"]})
        for k in detail["keys"]:
            k["error_codes"] = kcodes.get(k["id"], [])
            k["blocked"] = blocked.get(k["id"])
