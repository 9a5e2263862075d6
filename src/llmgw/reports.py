"""Spend reports and the live ledger feed: report windows, grouped report queries, output formatting.

Owns: parsing ``--period`` / ``--since`` / ``--until`` into a UTC window, the grouped report query
(``report``), its table/CSV/JSON renderings, and the read side of ``llmgw tail`` (``tail_rows``,
``tail_line``, ``tail_json``). No front-end imports: the CLI modules call these functions.

Invariants:
- Windows are half-open, ``since_ms <= ts_ms < until_ms``, calendar-aligned in UTC.
- Money is summed in SQL as integers (``cost_nanos``); the USD strings are derived from that integer
  exactly (``units.usd``: every decimal the amount needs), never through a float. History is read
  through ``store.rollups.grouped`` (daily and hourly roll-ups, raw rows only at partial-hour edges),
  which equals the raw ledger to the nano-dollar; the groups partition the window's rows and the
  total is their sum.
- Everything here only reads: it works on a read-only connection next to a running daemon.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from . import clock
from .errors import NotFound, UsageError
from .store import rollups
from .units import epoch_ms, iso_utc, parse_time, usd, window

NONE_LABEL = "(none)"
TOTAL_LABEL = "TOTAL"

# --by value -> (ledger column, definitions table holding a name for the id, or None)
BY: dict[str, tuple[str, str | None]] = {
    "customer": ("customer_id", "customers"),
    "team": ("team_id", "teams"),
    "key": ("key_id", "keys"),
    "model": ("model", None),
    "provider": ("provider", None),
}
SUMS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos")


# ---- windows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """``since_ms <= ts_ms < until_ms`` (either end may be open); ``label`` names it for people."""

    since_ms: int | None
    until_ms: int | None
    label: str

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "since": iso_ms(self.since_ms), "until": iso_ms(self.until_ms),
                "since_ms": self.since_ms, "until_ms": self.until_ms}


def iso_ms(ms: int | None) -> str | None:
    """``2026-11-27T10:00:00.123Z`` for an epoch-millisecond value (None stays None)."""
    return None if ms is None else iso_utc(ms, millis=True)


_PERIOD_FORMS = "YYYY, YYYY-MM (month), YYYY-MM-DD (day) or YYYY-Www (ISO week, e.g. 2026-W48)"


def parse_period(period: str) -> Window:
    """A calendar period in UTC: ``2026`` (year), ``2026-11`` (month), ``2026-11-27`` (day),
    ``2026-W48`` (ISO week, Monday to Monday). Raises ``UsageError`` for anything else."""
    p = period.strip()
    try:
        if m := re.fullmatch(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?", p):
            kind, d = "day" if m[3] else "month" if m[2] else "year", date(int(m[1]), int(m[2] or 1), int(m[3] or 1))
        elif m := re.fullmatch(r"(\d{4})-?[Ww](\d{2})", p):
            kind, d, p = "week", date.fromisocalendar(int(m[1]), int(m[2]), 1), f"{m[1]}-W{m[2]}"
        else:
            raise ValueError("unrecognised form")
    except ValueError as e:
        raise UsageError(f"bad --period {period!r}: expected {_PERIOD_FORMS} ({e})") from None
    return Window(*window(kind, epoch_ms(d)), p)


def resolve_window(period: str | None, since: str | None, until: str | None,
                   *, now_ms: int | None = None) -> Window:
    """``--period`` or ``--since``/``--until`` (either end may be left open); neither: the current
    UTC calendar month at ``now_ms``."""
    if period is not None and (since is not None or until is not None):
        raise UsageError("use either --period or --since/--until, not both")
    if period is not None:
        return parse_period(period)
    if since is None and until is None:
        start, end = window("month", clock.now_ms() if now_ms is None else now_ms)
        return Window(start, end, iso_utc(start)[:7])
    s = parse_time(since, "--since") if since is not None else None
    u = parse_time(until, "--until") if until is not None else None
    if s is not None and u is not None and s >= u:
        raise UsageError(f"--since ({since}) must be before --until ({until})")
    return Window(s, u, f"{iso_ms(s) or '…'} .. {iso_ms(u) or '…'}")


# ---- filters shared by report and tail -----------------------------------------------------------


def check_customer(conn: sqlite3.Connection, customer: str) -> None:
    """``NotFound`` unless ``customer`` is a defined customer or appears in the ledger."""
    known = conn.execute("SELECT 1 FROM customers WHERE id = ?", (customer,)).fetchone() or _in_history(
        conn, "customer_id", customer)
    if not known:
        raise NotFound(f"unknown customer {customer!r}")


def resolve_key(conn: sqlite3.Connection, key: str) -> str:
    """A key id from an id or a name; ``NotFound`` if neither a defined key nor a ledger key id."""
    row = conn.execute("SELECT id FROM keys WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1",
                       (key, key, key)).fetchone()
    if row:
        return str(row[0])
    if _in_history(conn, "key_id", key):
        return key
    raise NotFound(f"unknown key {key!r} (give a key id or name)")


def _in_history(conn: sqlite3.Connection, column: str, value: str) -> bool:
    """Whether ``value`` appears in ``column`` of the ledger or (for pruned days) its daily roll-ups."""
    if conn.execute(f"SELECT 1 FROM ledger WHERE {column} = ? LIMIT 1", (value,)).fetchone():
        return True
    return rollups.available(conn) and conn.execute(
        f"SELECT 1 FROM {rollups.TABLES['day']} WHERE {column} = ? LIMIT 1", (value,)).fetchone() is not None


# ---- report --------------------------------------------------------------------------------------


@dataclass
class Report:
    by: str
    window: Window
    customer: str | None
    groups: list[dict[str, Any]] = field(default_factory=list)
    total: dict[str, Any] = field(default_factory=dict)

    @property
    def has_names(self) -> bool:
        return BY[self.by][1] is not None


_AGGS: list[rollups.Agg] = [("requests", "SUM", "requests"), ("errors", "SUM", "errors"),
                            *((c, "SUM", c) for c in SUMS),
                            ("cache_hits", "SUM", "CASE WHEN cache LIKE 'hit-%' THEN requests ELSE 0 END"),
                            ("saved_nanos", "SUM", "saved_nanos")]


def report(conn: sqlite3.Connection, *, by: str, window: Window, customer: str | None = None) -> Report:
    """Per-group totals (highest cost first, the NULL group last) and the grand total.

    Read from the roll-ups (whole days and hours) and raw rows only at partial-hour edges, summed
    in SQL as integers; the total is the sum of the groups, which partition the window's rows."""
    if by not in BY:
        raise UsageError(f"--by must be one of {', '.join(BY)}")
    col, names = BY[by]
    if customer is not None:
        check_customer(conn, customer)
    sql, params = rollups.grouped(conn, window.since_ms, window.until_ms, [col], _AGGS,
                                  {"customer_id": customer} if customer is not None else None)
    name = "n.name" if names else "NULL"
    join = f" LEFT JOIN {names} AS n ON n.id = g.g0" if names else ""
    cols = ", ".join(f"COALESCE(g.{a[0]}, 0) AS {a[0]}" for a in _AGGS)
    groups = _fetch(conn, f"SELECT g.g0 AS id, {cols}, {name} AS name FROM ({sql}) AS g{join}", params)
    groups.sort(key=lambda g: (-int(g["cost_nanos"]), g["id"] is None, g["id"] or ""))
    total = {k: sum(int(g[k]) for g in groups) for k in (*_NUMBERS, "cache_hits", "saved_nanos")}
    return Report(by, window, customer, groups, total)


def _fetch(conn: sqlite3.Connection, sql: str, params: dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
    cur = conn.execute(sql, params)
    try:
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        cur.close()


_NUMBERS = ("requests", "errors", *SUMS)


def _json_row(r: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: int(r[k]) for k in _NUMBERS}
    out["cost_usd"] = usd(out["cost_nanos"], dollar=False)
    out["cache_hits"] = int(r["cache_hits"])
    out["saved_nanos"] = int(r["saved_nanos"])
    out["saved_usd"] = usd(out["saved_nanos"], dollar=False)
    return out


def to_json(rep: Report) -> dict[str, Any]:
    """JSON shape: ``by``, ``window``, ``customer`` filter, ``groups`` (``id`` null for no id,
    ``name`` where the group has one) and ``total``. Money as ``cost_nanos`` (int) and ``cost_usd`` (str)."""
    groups = []
    for g in rep.groups:
        item: dict[str, Any] = {"id": g["id"]}
        if rep.has_names:
            item["name"] = g["name"]
        item.update(_json_row(g))
        groups.append(item)
    return {"by": rep.by, "window": rep.window.as_json(), "customer": rep.customer, "groups": groups,
            "total": _json_row(rep.total)}


def to_json_text(rep: Report) -> str:
    return json.dumps(to_json(rep), indent=2) + "\n"


def _headers(rep: Report) -> list[str]:
    return [rep.by, *(["name"] if rep.has_names else []), "requests", "errors", "prompt_tokens",
            "completion_tokens", "cached_tokens", "cost_nanos", "cost_usd", "cache_hits", "saved_nanos", "saved_usd"]


def _cells(rep: Report, r: dict[str, Any], label: str, *, dollar: bool = False) -> list[str]:
    cells = [label]
    if rep.has_names:
        cells.append(r.get("name") or "")
    cells += [str(int(r[k])) for k in _NUMBERS]
    cells.append(usd(int(r["cost_nanos"]), dollar=dollar))
    cells += [str(int(r["cache_hits"])), str(int(r["saved_nanos"])), usd(int(r["saved_nanos"]), dollar=dollar)]
    return cells


def to_csv(rep: Report) -> str:
    """CSV with a header row, one row per group (``(none)`` for no id) and a final ``TOTAL`` row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_headers(rep))
    for g in rep.groups:
        w.writerow(_cells(rep, g, NONE_LABEL if g["id"] is None else str(g["id"])))
    w.writerow(_cells(rep, rep.total, TOTAL_LABEL))
    return buf.getvalue()


def table_title(rep: Report) -> str:
    w = rep.window
    span = f"{iso_ms(w.since_ms) or 'beginning'} to {iso_ms(w.until_ms) or 'now'}"
    who = f", customer {rep.customer}" if rep.customer else ""
    return f"Spend by {rep.by}, {w.label} ({span}, UTC){who}"


def table_rows(rep: Report) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, group rows and the TOTAL row for a human table (cost shown as ``$``, exact)."""
    headers = [rep.by, *(["name"] if rep.has_names else []), "requests", "errors", "prompt", "completion",
               "cached", "cost (USD)", "cache hits", "saved (USD)"]
    def cells(r: dict[str, Any], label: str) -> list[str]:
        c = _cells(rep, r, label, dollar=True)
        del c[-2]  # saved_nanos and cost_nanos: exact in csv/json, noise in a table
        del c[-4]
        return c
    body = [cells(g, NONE_LABEL if g["id"] is None else str(g["id"])) for g in rep.groups]
    return headers, body, cells(rep.total, TOTAL_LABEL)


# ---- tail ----------------------------------------------------------------------------------------

TAIL_COLUMNS = ("id", "ts_ms", "request_id", "customer_id", "team_id", "key_id", "model", "provider", "status",
                "outcome", "error_type", "error_code", "prompt_tokens", "completion_tokens", "cached_tokens",
                "cost_nanos", "cache", "latency_ms", "stream")


def tail_rows(conn: sqlite3.Connection, *, after_id: int | None = None, upto_id: int | None = None,
              last: int | None = None, customer: str | None = None, key_id: str | None = None,
              limit: int = 1000) -> list[dict[str, Any]]:
    """Ledger rows (no bodies) with the key's name, oldest first, ``after_id < id <= upto_id``: the
    newest ``last`` of them, or else the first ``limit``. Each call is one short read transaction."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if after_id is not None:
        clauses.append("l.id > :after_id")
        params["after_id"] = after_id
    if upto_id is not None:
        clauses.append("l.id <= :upto_id")
        params["upto_id"] = upto_id
    if customer is not None:
        clauses.append("l.customer_id = :customer")
        params["customer"] = customer
    if key_id is not None:
        clauses.append("l.key_id = :key_id")
        params["key_id"] = key_id
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    cols = ", ".join(f"l.{c}" for c in TAIL_COLUMNS)
    base = f"SELECT {cols}, k.name AS key_name FROM ledger AS l LEFT JOIN keys AS k ON k.id = l.key_id{where}"
    if last is not None:
        params["n"] = last
        return list(reversed(_fetch(conn, base + " ORDER BY l.id DESC LIMIT :n", params)))
    params["n"] = limit
    return _fetch(conn, base + " ORDER BY l.id LIMIT :n", params)


def last_id(conn: sqlite3.Connection) -> int:
    """The highest ledger id (0 when empty): ids only grow, so ``id > last_id`` means "new"."""
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM ledger").fetchone()[0])


def tail_json(r: dict[str, Any]) -> dict[str, Any]:
    """One ledger row for ``tail --json`` (one object per line)."""
    out = {k: r[k] for k in TAIL_COLUMNS}
    out["ts"] = iso_ms(r["ts_ms"])
    out["key_name"] = r["key_name"]
    out["cost_usd"] = usd(r["cost_nanos"], dollar=False)
    return out


def _aligned_usd(nanos: int) -> str:
    """Exact ``$`` amount, padded on the right to 9 decimals so decimal points line up."""
    s = usd(nanos)
    return s + " " * (9 - (len(s) - s.index(".") - 1))


def tail_line(r: dict[str, Any]) -> str:
    """``time  request  customer  key  model  status  in/out  cost  cache  latency [error]`` on one line."""
    ts = (iso_ms(r["ts_ms"]) or "").replace("T", " ").rstrip("Z")
    latency = f"{r['latency_ms']:.0f}ms" if r["latency_ms"] is not None else "-"
    tokens = f"{r['prompt_tokens']}/{r['completion_tokens']}"
    parts = [
        ts, f"{r['request_id']:<20}", f"{r['customer_id'] or '-':<14}", f"{r['key_name'] or r['key_id'] or '-':<16}",
        f"{r['model'] or '-':<28}", f"{r['status']:>3}", f"{tokens:>11}", f"{_aligned_usd(r['cost_nanos']):>15}",
        f"{r['cache'] or '-':<6}", f"{latency:>7}",
    ]
    if r["error_type"]:
        parts.append(str(r["error_type"]) + (f":{r['error_code']}" if r["error_code"] else ""))
    return "  ".join(parts).rstrip()
