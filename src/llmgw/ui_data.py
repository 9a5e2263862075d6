"""What the finance page shows: windows, per-customer overview, one customer's detail, errors by
type, and their CSV downloads. The read side of ``server/ui.py``; no front-end imports.

Invariants:
- Every number comes from the same code as ``llmgw report``: the grouped tables are
  ``reports.report`` (their CSV is ``reports.to_csv``, byte for byte the CLI's ``--format csv``),
  and the per-day, cache and error tables aggregate ``store.rollups.grouped``, whose sums equal
  the raw ledger; the days of a window partition it, so they add up to its report total exactly.
- Money is integer nano-dollars; USD strings come from ``units.usd``. A display currency is a
  conversion for people (``Currency``): an exact ``Decimal`` product in CSVs, rounded to cents on the
  page, always labelled as converted, never a float and never stored.
- Budget utilisation is of each budget's *current* window (``budget_report`` at ``now_ms``), whatever
  window the page shows; its level is ``ok``/``warn``/``cap`` by the rule ``llmgw top`` colours by.
- Everything here only reads.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from . import reports
from .errors import UsageError
from .governance.budgets import budget_report, select_budgets
from .store import rollups
from .units import DAY_MS, iso_utc, usd

#: at most this many days are listed one by one (a longer window lists the days that have rows)
MAX_FILLED_DAYS = 400
MAX_LAST_DAYS = 366


# ---- money in a display currency ------------------------------------------------------------------


@dataclass(frozen=True)
class Currency:
    """A display currency: ``rate`` units of ``code`` per USD (exact decimal)."""

    code: str
    rate: Decimal

    def exact(self, nanos: int) -> str:
        """``nanos`` USD in this currency, exactly (every decimal the product needs, at least two)."""
        with localcontext() as ctx:
            ctx.prec = 80  # 19 digits of nanos times a rate of at most 21 digits: always exact
            amount = (Decimal(nanos) * self.rate).scaleb(-9)
        text = f"{amount:f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        whole, _, frac = text.partition(".")
        return f"{whole}.{frac.ljust(2, '0')}"

    def display(self, nanos: int) -> str:
        """Rounded half-up to cents, for the page: ``EUR 11.36``."""
        with localcontext() as ctx:
            ctx.prec = 80
            amount = (Decimal(nanos) * self.rate).scaleb(-9).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        return f"{self.code} {amount:f}"

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "rate": str(self.rate),
                "label": f"converted from USD at {self.rate} {self.code} per USD"}


def money(nanos: int, currency: Currency | None) -> dict[str, Any]:
    """One amount for the page: exact ``nanos`` and ``usd``, ``display`` in cents, ``converted``."""
    out: dict[str, Any] = {"nanos": nanos, "usd": usd(nanos, dollar=False), "display": usd(nanos, places=2)}
    if currency is not None:
        out["converted"] = currency.display(nanos)
    return out


# ---- windows -------------------------------------------------------------------------------------


def resolve(params: dict[str, str], now_ms: int) -> reports.Window:
    """The page's window: ``period`` (``2026-11``...), ``since``/``until`` (as ``llmgw report``; until
    exclusive), ``last`` (the last N whole UTC days, today included), or else this month."""
    last = params.get("last")
    if last is not None:
        if any(params.get(k) is not None for k in ("period", "since", "until")):
            raise UsageError("last: give last, period or since/until, not several", param="last")
        if not last.isdigit() or not 1 <= int(last) <= MAX_LAST_DAYS:
            raise UsageError(f"last: expected a number of days from 1 to {MAX_LAST_DAYS}, got {last!r}", param="last")
        tomorrow = now_ms - now_ms % DAY_MS + DAY_MS
        since = tomorrow - int(last) * DAY_MS
        return reports.Window(since, tomorrow, f"last {int(last)} days ({iso_utc(since)[:10]} to "
                                               f"{iso_utc(tomorrow - DAY_MS)[:10]})")
    for name in ("period", "since", "until"):
        if params.get(name) == "":
            params = {k: v for k, v in params.items() if k != name}
    try:
        return reports.resolve_window(params.get("period"), params.get("since"), params.get("until"), now_ms=now_ms)
    except UsageError as e:  # its messages name the CLI's flags: name the query parameters instead
        msg = e.message.replace("--period", "period").replace("--since", "since").replace("--until", "until")
        raise UsageError(msg, param=e.param.lstrip("-") if e.param else None) from None


# ---- the tables ----------------------------------------------------------------------------------


def level(spent: int, limit: int, warn_pct: int) -> str:
    """``ok``, ``warn`` (spent reached ``warn_pct`` % of the limit) or ``cap`` (reached the limit):
    the rule ``llmgw top`` colours its budget bars by."""
    if spent <= 0:
        return "ok"
    if spent >= limit:
        return "cap"
    return "warn" if spent * 100 >= limit * warn_pct else "ok"


def budgets(conn: sqlite3.Connection, now_ms: int, customer: str | None = None) -> list[dict[str, Any]]:
    """Budgets with their spend now (every customer budget, or one customer's with its teams' and
    keys'), each with ``level``."""
    rows = select_budgets(conn, "customer", customer) if customer is not None else [
        r for r in select_budgets(conn) if r["scope"] == "customer"]
    out = budget_report(conn, rows, now_ms)
    for b in out:
        b["level"] = level(b["spent_nanos"], b["limit_nanos"], b["warn_pct"])
    return out


def _row(r: dict[str, Any], currency: Currency | None) -> dict[str, Any]:
    out = reports._json_row(r)
    out["cost"] = money(out["cost_nanos"], currency)
    out["saved"] = money(out["saved_nanos"], currency)
    return out


def _report_json(rep: reports.Report, currency: Currency | None) -> dict[str, Any]:
    out = reports.to_json(rep)
    for g, raw in zip(out["groups"], rep.groups, strict=True):
        g.update(_row(raw, currency))
    out["total"] = _row(rep.total, currency)
    return out


def customers(conn: sqlite3.Connection, window: reports.Window, now_ms: int,
              currency: Currency | None) -> dict[str, Any]:
    """Spend by customer in ``window`` (the rows of ``llmgw report --by customer``), each with its
    most used customer budget now (``budget``: null when it has none), and the share of the
    largest spender (``bar_pct``, for the chart)."""
    rep = reports.report(conn, by="customer", window=window)
    out = _report_json(rep, currency)
    best: dict[str, dict[str, Any]] = {}
    for b in budgets(conn, now_ms):
        cur = best.get(b["scope_id"])
        if cur is None or _used(b) > _used(cur):
            best[b["scope_id"]] = b
    top = max((g["cost_nanos"] for g in out["groups"]), default=0)
    for g in out["groups"]:
        g["budget"] = best.get(g["id"]) if g["id"] is not None else None
        g["bar_pct"] = _pct(g["cost_nanos"], top)
    return out


def _used(b: dict[str, Any]) -> tuple[int, int]:
    # most used first; a tie goes to the budget that resets sooner (the shorter period)
    order = {"day": 3, "week": 2, "month": 1, "total": 0}
    return (b["spent_nanos"] * 10**6 // max(b["limit_nanos"], 1), order.get(b["period"], 0))


def _pct(part: int, whole: int) -> float:
    """A bar's length in percent (drawing only: the numbers shown are exact)."""
    return round(100 * part / whole, 2) if whole > 0 else 0.0


def report(conn: sqlite3.Connection, by: str, window: reports.Window, customer: str | None,
           currency: Currency | None) -> dict[str, Any]:
    """``llmgw report --by BY [--customer C]`` as JSON for the page (money also as ``cost``/``saved``)."""
    out = _report_json(reports.report(conn, by=by, window=window, customer=customer), currency)
    top = max((g["cost_nanos"] for g in out["groups"]), default=0)
    for g in out["groups"]:
        g["bar_pct"] = _pct(g["cost_nanos"], top)
    return out


def _filters(customer: str | None) -> dict[str, str] | None:
    return {"customer_id": customer} if customer is not None else None


def _bounds(conn: sqlite3.Connection, window: reports.Window) -> tuple[int, int] | None:
    """The window with an open end closed at the first or last day that has rows (None: no rows)."""
    s, u = window.since_ms, window.until_ms
    if s is None or u is None:
        lo, hi = conn.execute("SELECT MIN(ts_ms), MAX(ts_ms) FROM ledger").fetchone()
        if rollups.available(conn):  # pruned days live on in the roll-ups only
            first = conn.execute(f"SELECT MIN(start_ms) FROM {rollups.TABLES['day']}").fetchone()[0]
            lo = first if lo is None or (first is not None and first < lo) else lo
        if lo is None or hi is None:
            return None
        s = lo - lo % DAY_MS if s is None else s
        u = hi - hi % DAY_MS + DAY_MS if u is None else u
    return (s, u) if s < u else None


def _sums(conn: sqlite3.Connection, since: int | None, until: int | None, group: list[str], filters: dict[str, str] | None,
          aggs: list[rollups.Agg]) -> list[dict[str, Any]]:
    sql, params = rollups.grouped(conn, since, until, group, aggs, filters)
    return reports._fetch(conn, sql, params)


def daily(conn: sqlite3.Connection, window: reports.Window, customer: str | None,
          currency: Currency | None) -> dict[str, Any]:
    """Spend per UTC day in ``window`` (every day, up to ``MAX_FILLED_DAYS``; an open end stops at
    the first or last day with rows) and the total, which equals the report's total for the window.

    One grouped query per day (``rollups.grouped`` over that day: its daily roll-up, or hours and
    raw rows for a partial day), so no monthly roll-up row, which spans a whole month, is bucketed."""
    if customer is not None:
        reports.check_customer(conn, customer)
    zero = {k: 0 for k in (*reports._NUMBERS, "cache_hits", "saved_nanos")}
    bounds = _bounds(conn, window)
    rows: list[dict[str, Any]] = []
    total = dict(zero)
    if bounds is not None:
        s, u = bounds
        first = s - s % DAY_MS
        n = -(-(u - first) // DAY_MS)
        if n > MAX_FILLED_DAYS:
            raise UsageError(f"the window spans {n} days: the per-day view shows at most {MAX_FILLED_DAYS};"
                             " pick a shorter range")
        for day in range(first, u, DAY_MS):
            [r] = _sums(conn, max(s, day), min(u, day + DAY_MS), [], _filters(customer), reports._AGGS)
            r = {k: int(r[k] or 0) for k in zero}
            for k in zero:
                total[k] += r[k]
            rows.append({"day": iso_utc(day)[:10], **_row(r, currency)})
    top = max((r["cost_nanos"] for r in rows), default=0)
    for r in rows:
        r["bar_pct"] = _pct(r["cost_nanos"], top)
    return {"window": window.as_json(), "customer": customer, "days": rows, "total": _row(total, currency)}


def errors(conn: sqlite3.Connection, window: reports.Window, customer: str | None) -> dict[str, Any]:
    """Failed requests in ``window`` by error type and code (and status class), most first, with the
    window's request count for the share."""
    if customer is not None:
        reports.check_customer(conn, customer)
    rows = _sums(conn, window.since_ms, window.until_ms, ["error_type", "error_code", "status_class"],
                 _filters(customer), [("errors", "SUM", "errors"), ("requests", "SUM", "requests")])
    requests = sum(int(r["requests"]) for r in rows)
    rows = [r for r in rows if int(r["errors"])]
    rows.sort(key=lambda r: (-int(r["errors"]), r["g0"] is None, r["g0"] or "", r["g1"] or "", r["g2"]))
    out = [{"error_type": r["g0"], "error_code": r["g1"], "status_class": f"{int(r['g2'])}xx",
            "errors": int(r["errors"]), "share_pct": _pct(int(r["errors"]), requests)} for r in rows]
    return {"window": window.as_json(), "customer": customer, "requests": requests, "errors": out,
            "total_errors": sum(r["errors"] for r in out)}


def cache(conn: sqlite3.Connection, window: reports.Window, customer: str | None,
          currency: Currency | None) -> dict[str, Any]:
    """Requests and savings by cache outcome (``hit-exact``, ``hit-semantic``, ``miss``, ...; null:
    the cache was not consulted)."""
    rows = _sums(conn, window.since_ms, window.until_ms, ["cache"], _filters(customer),
                 [("requests", "SUM", "requests"), ("saved_nanos", "SUM", "saved_nanos")])
    rows.sort(key=lambda r: (-int(r["requests"]), r["g0"] is None, r["g0"] or ""))
    return {"outcomes": [{"cache": r["g0"], "requests": int(r["requests"]),
                          "saved": money(int(r["saved_nanos"]), currency)} for r in rows]}


def customer(conn: sqlite3.Connection, cid: str, window: reports.Window, now_ms: int,
             currency: Currency | None) -> dict[str, Any]:
    """One customer: spend per day, by model and by key, its budgets now, cache and errors."""
    reports.check_customer(conn, cid)
    row = conn.execute("SELECT name FROM customers WHERE id = ?", (cid,)).fetchone()
    return {
        "id": cid, "name": row[0] if row else None, "window": window.as_json(),
        "daily": daily(conn, window, cid, currency),
        "models": report(conn, "model", window, cid, currency),
        "keys": report(conn, "key", window, cid, currency),
        "budgets": budgets(conn, now_ms, cid),
        "cache": cache(conn, window, cid, currency),
        "errors": errors(conn, window, cid),
    }


# ---- CSV -----------------------------------------------------------------------------------------


def _csv(headers: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    w.writerows(rows)
    return buf.getvalue()


def with_converted(text: str, currency: Currency | None) -> str:
    """A CSV with ``cost_nanos``/``saved_nanos`` columns, plus ``cost_<CODE>_converted`` and
    ``saved_<CODE>_converted`` (exact) and the rate; unchanged without a currency."""
    if currency is None:
        return text
    table = list(csv.reader(io.StringIO(text)))
    head = table[0]
    cols = [(i, h.removesuffix("_nanos")) for i, h in enumerate(head) if h.endswith("_nanos")]
    head += [f"{name}_{currency.code}_converted" for _, name in cols] + [f"usd_to_{currency.code}_rate"]
    body = [r + [currency.exact(int(r[i])) for i, _ in cols] + [str(currency.rate)] for r in table[1:]]
    return _csv(head, body)


_MONEY_COLS = ["requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos",
               "cost_usd", "cache_hits", "saved_nanos", "saved_usd"]


def daily_csv(d: dict[str, Any]) -> str:
    """The per-day table: one row per day and a ``TOTAL`` row (the report's total), money exact."""
    def cells(label: str, r: dict[str, Any]) -> list[Any]:
        return [label, *(r[k] for k in _MONEY_COLS)]
    return _csv(["day", *_MONEY_COLS], [cells(r["day"], r) for r in d["days"]] + [cells(reports.TOTAL_LABEL, d["total"])])


def errors_csv(e: dict[str, Any]) -> str:
    return _csv(["error_type", "error_code", "status_class", "errors"],
                [[r["error_type"] or reports.NONE_LABEL, r["error_code"] or "", r["status_class"], r["errors"]]
                 for r in e["errors"]] + [[reports.TOTAL_LABEL, "", "", e["total_errors"]]])


_BUDGET_COLS = ["id", "scope", "scope_id", "name", "period", "hard", "limit_nanos", "limit_usd", "spent_nanos",
                "spent_usd", "remaining_nanos", "remaining_usd", "utilisation_pct", "warn_pct", "level",
                "window_start", "resets"]


def budgets_csv(rows: list[dict[str, Any]]) -> str:
    return _csv(_BUDGET_COLS, [["" if b[k] is None else b[k] for k in _BUDGET_COLS] for b in rows])


def cache_csv(c: dict[str, Any]) -> str:
    """Requests and savings by cache outcome (``(none)``: not consulted) and a ``TOTAL`` row."""
    rows = [[o["cache"] or reports.NONE_LABEL, o["requests"], o["saved"]["nanos"], o["saved"]["usd"]]
            for o in c["outcomes"]]
    saved = sum(o["saved"]["nanos"] for o in c["outcomes"])
    rows.append([reports.TOTAL_LABEL, sum(o["requests"] for o in c["outcomes"]), saved, usd(saved, dollar=False)])
    return _csv(["cache", "requests", "saved_nanos", "saved_usd"], rows)
