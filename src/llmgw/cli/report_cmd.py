"""``llmgw report``: spend per customer, team, key, model or provider over a UTC calendar window."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from .common import HomeOpt, open_readonly, resolve_home

if TYPE_CHECKING:
    from ..reports import Report


class By(StrEnum):
    customer = "customer"
    team = "team"
    key = "key"
    model = "model"
    provider = "provider"


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def report(
    by: Annotated[By, typer.Option("--by", help="Group rows by this column.")] = By.customer,
    period: Annotated[str | None, typer.Option(
        "--period", help="UTC calendar window: 2026-11 (month), 2026-11-27 (day), 2026-W48 (ISO week) or 2026. "
                         "Default: the current month.")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="Start (inclusive), ISO-8601 date or date-time; UTC unless an offset is given.")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", help="End (exclusive), ISO-8601 date or date-time; UTC unless an offset is given.")] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer's rows (customer id).")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table for people; csv or json for machines.")] = Format.table,
    json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    home: HomeOpt = None,
) -> None:
    """Totals per group from the ledger: requests, errors, tokens and exact cost, with a TOTAL.

    Cost is summed as integer nano-dollars; csv and json carry both cost_nanos (an integer) and cost_usd (exact: every decimal it needs). Rows without a customer/team/key show as "(none)" (null in json).
    """
    from .. import reports

    window = reports.resolve_window(period, since, until)
    conn = open_readonly(resolve_home(home))
    try:
        rep = reports.report(conn, by=by.value, window=window, customer=customer)
    finally:
        conn.close()
    if json or fmt is Format.json:
        sys.stdout.write(reports.to_json_text(rep))
    elif fmt is Format.csv:
        sys.stdout.write(reports.to_csv(rep))
    else:
        _print_table(rep)


def _print_table(rep: Report) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from .. import reports

    headers, body, total = reports.table_rows(rep)
    table = Table(title=reports.table_title(rep), box=box.SIMPLE_HEAD)
    first_number = 2 if rep.has_names else 1
    for i, h in enumerate(headers):
        if i >= first_number:
            table.add_column(h, justify="right", no_wrap=True)
        else:
            table.add_column(h, overflow="fold")
    for i, row in enumerate(body):
        table.add_row(*row, end_section=i == len(body) - 1)
    table.add_row(*total, style="bold")
    console = Console()
    if not console.is_terminal:  # piped or redirected: never truncate or fold the data
        console = Console(width=max(console.width, 1000))
    console.print(table)
