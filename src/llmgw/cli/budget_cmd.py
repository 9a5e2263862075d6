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

from .common import HomeOpt, JsonOpt, err, open_existing_db, print_json, resolve_home, writing
from .tables import Column, Format, FormatOpt, emit, pick_format

if TYPE_CHECKING:
    import sqlite3

app = typer.Typer(help="Set, show and delete spending budgets (per customer, team or key).", no_args_is_help=True)

CustomerOpt = Annotated[str | None, typer.Option("--customer", help="Customer id.")]
TeamOpt = Annotated[str | None, typer.Option("--team", help="Team id.")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="Virtual key id or name.")]
PeriodOpt = Annotated[str | None, typer.Option("--period", help="day, week (ISO, from Monday), month or total "
                                                                "(calendar-aligned, UTC).")]

def _usage(msg: str) -> Exception:
    from ..errors import UsageError

    return UsageError(msg)


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


def _describe(row: Any) -> str:
    from ..governance.budgets import ADJECTIVE
    from ..units import usd

    kind = "hard" if row["hard"] else "soft"
    grace = f", grace {usd(row['grace_nanos'])}" if row["grace_nanos"] and row["hard"] else ""
    step = row["raise_step_nanos"] if "raise_step_nanos" in row.keys() else 0
    auto = f", auto-raise {usd(step)} up to {usd(row['ceiling_nanos'])}" if step else ""
    return (f"{row['scope']} {row['scope_id']} {ADJECTIVE[row['period']]} budget {usd(row['limit_nanos'])} "
            f"({kind}, warn at {row['warn_pct']}%{grace}{auto})")


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
    auto_raise: Annotated[str | None, typer.Option(
        "--auto-raise", metavar="STEP", help="USD: when the hard limit would refuse a request, raise it by STEP "
                                             "instead (a budget_raised event, webhook and response header), at "
                                             "most once per STEP spent, up to --ceiling; for the rest of the "
                                             "window. 0 turns it off. Default: off (kept when updating).")] = None,
    ceiling: Annotated[str | None, typer.Option(
        "--ceiling", metavar="USD", help="The most --auto-raise may raise the limit to (above --limit); past it "
                                         "requests are refused as without auto-raise.")] = None,
    fail_open: Annotated[bool | None, typer.Option(
        "--fail-open/--fail-closed", help="Cluster mode ([cluster] redis_url): while Redis is unreachable, admit on "
                                          "this instance's own view of the budget (with a governance_degraded "
                                          "event) instead of refusing with 503 governance_unavailable. Default: "
                                          "fail closed (kept when updating).")] = None,
    home: HomeOpt = None,
    json: Annotated[bool, typer.Option("--json", help="Print the budget as JSON instead of its id.")] = False,
) -> None:
    """Create or update the budget of one customer, team or key for one period; prints its id."""
    from ..governance.budgets import upsert_budget
    from ..units import parse_usd

    scope, value = _one_scope(customer, team, key)
    if limit is None:
        raise _usage("--limit is required (USD per period)")
    limit_nanos = parse_usd(limit, "limit")
    p = _period(period)
    assert p is not None
    grace_nanos = None if grace is None else parse_usd(grace, "grace")
    step_nanos = None if auto_raise is None else parse_usd(auto_raise, "auto_raise")
    ceiling_nanos = None if ceiling is None else parse_usd(ceiling, "ceiling")
    with writing(resolve_home(home)) as conn:
        row, created = upsert_budget(conn, scope, value, p, limit_nanos, hard=hard, warn_pct=warn_at,
                                     grace_nanos=grace_nanos, raise_step_nanos=step_nanos, ceiling_nanos=ceiling_nanos,
                                     fail_open=fail_open)
    bid = row["id"]
    err(f"{'created' if created else 'updated'} {bid}: {_describe(row)}")
    if json:
        print_json(dict(row))
    else:
        sys.stdout.write(bid + "\n")


def _selected(conn: sqlite3.Connection, customer: str | None, team: str | None, key: str | None) -> list[Any]:
    from ..governance.budgets import select_budgets

    if customer is None and team is None and key is None:
        return select_budgets(conn)
    scope, value = _one_scope(customer, team, key)
    return select_budgets(conn, scope, value)


@app.command()
def show(
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer's budgets (with those of "
                                                                    "its teams and keys).")] = None,
    team: Annotated[str | None, typer.Option("--team", help="Only this team's budgets (with its keys').")] = None,
    key: KeyOpt = None,
    home: HomeOpt = None,
    fmt: FormatOpt = None,
    json: JsonOpt = False,
) -> None:
    """List budgets with what was spent in the current window (from the ledger), remaining and % used;
    a line under the table for each budget with auto-raise (how often it was raised this window)."""
    from ..clock import now_ms
    from ..governance.budgets import budget_report

    form = pick_format(fmt, json)
    conn = open_existing_db(resolve_home(home))
    try:
        rows = _selected(conn, customer, team, key)
        report = budget_report(conn, rows, now_ms())
    finally:
        conn.close()
    emit(SHOW_COLUMNS_TABLE, report, form, machine_columns=SHOW_COLUMNS)
    if form is Format.table:
        for line in auto_raise_lines(report):
            sys.stdout.write(line + "\n")


def _money_col(header: str, field: str, drop: int = 0) -> Column:
    from ..units import usd

    return Column(header, lambda r: usd(r[field + "_nanos"]), lambda r: r[field + "_usd"], keep=True, drop=drop,
                  right=True)


SHOW_COLUMNS = [
    Column("id", lambda r: r["id"], keep=True),
    Column("scope", lambda r: r["scope"], drop=6),
    Column("for", lambda r: r["scope_id"] + (f" ({r['name']})" if r["name"] else ""),
           lambda r: r["scope_id"], key="scope_id"),
    Column("name", lambda r: r["name"] or ""),  # csv/tsv only: the table shows it inside "for"
    Column("period", lambda r: r["period"], drop=4),
    Column("kind", lambda r: "hard" if r["hard"] else "soft", drop=7),
    _money_col("limit", "limit"),  # the limit in force (raised, with auto-raise)
    _money_col("spent", "spent"),
    _money_col("remaining", "remaining", drop=2),
    Column("used", lambda r: f"{r['utilisation_pct']}%", lambda r: r["utilisation_pct"], drop=3, right=True),
    Column("warn at", lambda r: f"{r['warn_pct']}%", lambda r: r["warn_pct"], drop=8, right=True),
    Column("resets", lambda r: r["resets"] or "never", lambda r: r["resets"] or "", keep=True, drop=5),
    Column("auto-raise", lambda r: "", lambda r: r["raise_step_usd"] if r["raise_step_nanos"] else "",
           key="auto_raise_usd"),
    Column("ceiling", lambda r: "", lambda r: r["ceiling_usd"] if r["raise_step_nanos"] else "", key="ceiling_usd"),
    Column("raises", lambda r: "", lambda r: r["raises"]),
]
# the table shows the name inside "for"; csv/tsv carry it in a column of its own
SHOW_COLUMNS_TABLE = [c for c in SHOW_COLUMNS if c.header not in ("name", "auto-raise", "ceiling", "raises")]


def auto_raise_lines(report: list[dict[str, Any]]) -> list[str]:
    """``bud_…: auto-raise $5.00 up to $30.00; raised 2 times this window, $10.00 → $20.00``"""
    from ..units import usd

    out = []
    for r in report:
        if not r.get("raise_step_nanos"):
            continue
        n = r["raises"]
        done = (f"raised {n} time{'s' if n != 1 else ''} this window, {usd(r['base_limit_nanos'])} → "
                f"{usd(r['limit_nanos'])}" if n else "not raised this window")
        top = " (at its ceiling)" if r["limit_nanos"] >= r["ceiling_nanos"] else ""
        out.append(f"{r['id']}: auto-raise {usd(r['raise_step_nanos'])} up to {usd(r['ceiling_nanos'])}; "
                   f"{done}{top}")
    return out


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
    from ..governance.budgets import delete_budget, resolve_scope

    by_scope = customer is not None or team is not None or key is not None
    if (budget_id is None) == (not by_scope):
        raise _usage("give either --id, or one of --customer, --team or --key with --period")
    with writing(resolve_home(home), existing=True) as conn:
        if budget_id is None:
            scope, value = _one_scope(customer, team, key)
            p = _period(period)
            scope_id = resolve_scope(conn, scope, value)
            found = conn.execute("SELECT id FROM budgets WHERE scope = ? AND scope_id = ? AND period = ?",
                                 (scope, scope_id, p)).fetchone()
            if found is None:
                raise NotFound(f"no {p} budget for {scope} {value!r}")
            budget_id = str(found["id"])
        row = delete_budget(conn, budget_id)
    err(f"deleted {row['id']}: {_describe(row)}")
