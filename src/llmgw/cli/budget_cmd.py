"""``llmgw budget``: set, show and delete budgets on customers, teams and keys.

Amounts are parsed as decimals into exact integer nano-dollars. ``set`` is an upsert on
(scope, scope id, period): the budget keeps its id, so a running daemon keeps its spent counter and
only the limit changes. ``show`` computes spend in the current window from the ledger (the daemon's
in-flight reservations are not visible here).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import HomeOpt, JsonOpt, err, open_db, print_json, resolve_home

if TYPE_CHECKING:
    import sqlite3

app = typer.Typer(help="Set, show and delete spending budgets (per customer, team or key).", no_args_is_help=True)

CustomerOpt = Annotated[str | None, typer.Option("--customer", help="Customer id.")]
TeamOpt = Annotated[str | None, typer.Option("--team", help="Team id.")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="Virtual key id or name.")]
PeriodOpt = Annotated[str | None, typer.Option("--period", help="day, week (ISO, from Monday), month or total "
                                                                "(calendar-aligned, UTC).")]

_MAX_NANOS = 2**63 - 1


def _usage(msg: str) -> Exception:
    from ..errors import UsageError

    return UsageError(msg)


def _parse_usd(value: str, option: str) -> int:
    from decimal import Decimal, InvalidOperation

    text = value.strip().removeprefix("$").replace("_", "")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise _usage(f"{option}: expected an amount in USD such as 150 or 12.50, got {value!r}") from None
    if not amount.is_finite():
        raise _usage(f"{option}: expected a finite amount in USD, got {value!r}")
    if amount < 0:
        raise _usage(f"{option}: an amount cannot be negative, got {value!r}")
    nanos = amount.scaleb(9)
    if nanos != nanos.to_integral_value():
        raise _usage(f"{option}: {value!r} is finer than a nano-dollar (use at most 9 decimals)")
    if nanos > _MAX_NANOS:
        raise _usage(f"{option}: {value!r} is too large")
    return int(nanos)


def _period(period: str | None, *, required: bool = True) -> str | None:
    from ..governance.budgets import PERIODS

    if period is None:
        if required:
            raise _usage(f"--period is required ({', '.join(PERIODS)})")
        return None
    p = period.strip().lower()
    if p not in PERIODS:
        raise _usage(f"--period: expected one of {', '.join(PERIODS)}, got {period!r}")
    return p


def _one_scope(customer: str | None, team: str | None, key: str | None) -> tuple[str, str]:
    given = [(s, v) for s, v in (("customer", customer), ("team", team), ("key", key)) if v is not None]
    if len(given) != 1:
        raise _usage("give exactly one of --customer, --team or --key")
    scope, value = given[0]
    if not value.strip():
        raise _usage(f"--{scope}: expected a non-empty id")
    return scope, value.strip()


def _resolve(conn: sqlite3.Connection, scope: str, value: str) -> str:
    """The id of an existing customer, team or key (keys by id or name); ``NotFound`` otherwise."""
    from ..errors import NotFound

    if scope == "key":
        row = conn.execute("SELECT id FROM keys WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1",
                           (value, value, value)).fetchone()
    else:
        table = "customers" if scope == "customer" else "teams"
        row = conn.execute(f"SELECT id FROM {table} WHERE id = ?", (value,)).fetchone()
    if row is None:
        raise NotFound(f"no {scope} {value!r}")
    return str(row[0])


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def _describe(row: Any) -> str:
    from ..governance.budgets import ADJECTIVE, usd

    kind = "hard" if row["hard"] else "soft"
    grace = f", grace {usd(row['grace_nanos'])}" if row["grace_nanos"] and row["hard"] else ""
    return (f"{row['scope']} {row['scope_id']} {ADJECTIVE[row['period']]} budget {usd(row['limit_nanos'])} "
            f"({kind}, warn at {row['warn_pct']}%{grace})")


@app.command("set")
def set_(
    customer: CustomerOpt = None,
    team: TeamOpt = None,
    key: KeyOpt = None,
    limit: Annotated[str | None, typer.Option("--limit", help="Limit in USD per period, e.g. 150 or 12.50.")] = None,
    period: PeriodOpt = None,
    hard: Annotated[bool | None, typer.Option("--hard/--soft", help="Hard: reject requests the budget cannot pay "
                                                                    "for. Soft: only warn. Default: hard (kept "
                                                                    "when updating).")] = None,
    warn_at: Annotated[int | None, typer.Option("--warn-at", help="Warn (headers, event) from this percent of "
                                                                  "the limit, 1-100. Default: 80.")] = None,
    grace: Annotated[str | None, typer.Option("--grace", help="USD a hard budget may overrun (with an event), "
                                                              "so a batch is not cut mid-way. Default: 0.")] = None,
    home: HomeOpt = None,
    json: Annotated[bool, typer.Option("--json", help="Print the budget as JSON instead of its id.")] = False,
) -> None:
    """Create or update the budget of one customer, team or key for one period; prints its id."""
    scope, value = _one_scope(customer, team, key)
    if limit is None:
        raise _usage("--limit is required (USD per period)")
    limit_nanos = _parse_usd(limit, "--limit")
    p = _period(period)
    if warn_at is not None and not 1 <= warn_at <= 100:
        raise _usage(f"--warn-at: expected a percent from 1 to 100, got {warn_at}")
    grace_nanos = None if grace is None else _parse_usd(grace, "--grace")
    if hard is False and grace_nanos:
        raise _usage("--grace applies to hard budgets only (drop --soft or --grace)")

    conn = open_db(resolve_home(home))
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            scope_id = _resolve(conn, scope, value)
            old = conn.execute("SELECT * FROM budgets WHERE scope = ? AND scope_id = ? AND period = ?",
                               (scope, scope_id, p)).fetchone()
            now = _now_iso()
            if old is None:
                import uuid

                bid = "bud_" + uuid.uuid4().hex[:16]
                conn.execute(
                    "INSERT INTO budgets (id, scope, scope_id, period, limit_nanos, hard, warn_pct, grace_nanos,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (bid, scope, scope_id, p, limit_nanos, 1 if hard is None else int(hard),
                     80 if warn_at is None else warn_at, grace_nanos or 0, now, now))
            else:
                bid = old["id"]
                conn.execute(
                    "UPDATE budgets SET limit_nanos = ?, hard = ?, warn_pct = ?, grace_nanos = ?, updated_at = ?"
                    " WHERE id = ?",
                    (limit_nanos, old["hard"] if hard is None else int(hard),
                     old["warn_pct"] if warn_at is None else warn_at,
                     old["grace_nanos"] if grace_nanos is None else grace_nanos, now, bid))
            row = conn.execute("SELECT * FROM budgets WHERE id = ?", (bid,)).fetchone()
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    finally:
        conn.close()
    err(f"{'created' if old is None else 'updated'} {bid}: {_describe(row)}")
    if json:
        print_json(dict(row))
    else:
        sys.stdout.write(bid + "\n")


def _selected(conn: sqlite3.Connection, customer: str | None, team: str | None, key: str | None) -> list[Any]:
    if customer is None and team is None and key is None:
        return conn.execute("SELECT * FROM budgets ORDER BY scope, scope_id, period").fetchall()
    scope, value = _one_scope(customer, team, key)
    sid = _resolve(conn, scope, value)
    if scope == "customer":  # the customer's own budgets and those of its teams and keys
        sql = ("SELECT * FROM budgets WHERE (scope = 'customer' AND scope_id = :c)"
               " OR (scope = 'team' AND scope_id IN (SELECT id FROM teams WHERE customer_id = :c))"
               " OR (scope = 'key' AND scope_id IN (SELECT id FROM keys WHERE customer_id = :c))")
    elif scope == "team":
        sql = ("SELECT * FROM budgets WHERE (scope = 'team' AND scope_id = :c)"
               " OR (scope = 'key' AND scope_id IN (SELECT id FROM keys WHERE team_id = :c))")
    else:
        sql = "SELECT * FROM budgets WHERE scope = 'key' AND scope_id = :c"
    order = " ORDER BY CASE scope WHEN 'customer' THEN 0 WHEN 'team' THEN 1 ELSE 2 END, scope_id, period"
    return conn.execute(sql + order, {"c": sid}).fetchall()


def budget_report(conn: sqlite3.Connection, rows: list[Any], now_ms: int) -> list[dict[str, Any]]:
    """Each budget with spent (from the ledger), remaining and utilisation in its current window."""
    from ..governance.budgets import BudgetBook, iso_utc, ledger_spend, usd_plain

    book = BudgetBook()
    book.load(rows, ledger_spend(conn), now_ms)
    names = {("key", r["id"]): r["name"] for r in conn.execute("SELECT id, name FROM keys")}
    out = []
    for row in rows:
        st = book.status(row["id"], now_ms)
        end = st["window_end_ms"]
        out.append({
            "id": st["id"], "scope": st["scope"], "scope_id": st["scope_id"],
            "name": names.get((st["scope"], st["scope_id"])), "period": st["period"],
            "hard": st["hard"], "limit_nanos": st["limit_nanos"], "spent_nanos": st["spent_nanos"],
            "remaining_nanos": st["remaining_nanos"], "grace_nanos": st["grace_nanos"],
            "limit_usd": usd_plain(st["limit_nanos"]), "spent_usd": usd_plain(st["spent_nanos"]),
            "remaining_usd": usd_plain(st["remaining_nanos"]),
            "utilisation_pct": st["utilisation_pct"], "warn_pct": st["warn_pct"], "warn": st["warn"],
            "window_start": iso_utc(st["window_start_ms"]) if st["period"] != "total" else None,
            "resets": iso_utc(end) if end is not None else None,
        })
    return out


@app.command()
def show(
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer's budgets (with those of "
                                                                    "its teams and keys).")] = None,
    team: Annotated[str | None, typer.Option("--team", help="Only this team's budgets (with its keys').")] = None,
    key: KeyOpt = None,
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """List budgets with what was spent in the current window (from the ledger), remaining and % used."""
    import time

    conn = open_db(resolve_home(home))
    try:
        rows = _selected(conn, customer, team, key)
        report = budget_report(conn, rows, int(time.time() * 1000))
    finally:
        conn.close()
    if json:
        print_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "scope", "for", "period", "kind", "limit", "spent", "remaining", "used", "warn at",
                  "resets")
    for r in report:
        who = r["scope_id"] + (f" ({r['name']})" if r["name"] else "")
        table.add_row(r["id"], r["scope"], who, r["period"], "hard" if r["hard"] else "soft",
                      "$" + r["limit_usd"], "$" + r["spent_usd"], "$" + r["remaining_usd"],
                      f"{r['utilisation_pct']}%", f"{r['warn_pct']}%", r["resets"] or "never")
    Console().print(table)


@app.command()
def delete(
    budget_id: Annotated[str | None, typer.Option("--id", help="The budget id (as printed by set and show).")] = None,
    customer: CustomerOpt = None,
    team: TeamOpt = None,
    key: KeyOpt = None,
    period: PeriodOpt = None,
    home: HomeOpt = None,
) -> None:
    """Delete one budget, by --id or by scope and --period (the ledger keeps every charge)."""
    from ..errors import NotFound

    by_scope = customer is not None or team is not None or key is not None
    if (budget_id is None) == (not by_scope):
        raise _usage("give either --id, or one of --customer, --team or --key with --period")
    conn = open_db(resolve_home(home))
    try:
        with conn:
            if budget_id is not None:
                row = conn.execute("SELECT * FROM budgets WHERE id = ?", (budget_id,)).fetchone()
                what = f"budget {budget_id!r}"
            else:
                scope, value = _one_scope(customer, team, key)
                p = _period(period)
                scope_id = _resolve(conn, scope, value)
                row = conn.execute("SELECT * FROM budgets WHERE scope = ? AND scope_id = ? AND period = ?",
                                   (scope, scope_id, p)).fetchone()
                what = f"{p} budget for {scope} {value!r}"
            if row is None:
                raise NotFound(f"no {what}")
            conn.execute("DELETE FROM budgets WHERE id = ?", (row["id"],))
    finally:
        conn.close()
    err(f"deleted {row['id']}: {_describe(row)}")
