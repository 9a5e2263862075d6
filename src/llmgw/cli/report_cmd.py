"""``llmgw report``: spend per customer, team, key, model or provider over a UTC calendar window."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from .common import HomeOpt, open_readonly, resolve_home
from .tables import Format, FormatOpt, pick_format

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..reports import Report


class By(StrEnum):
    customer = "customer"
    team = "team"
    key = "key"
    model = "model"
    provider = "provider"


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
    fmt: FormatOpt = None,
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
    form = pick_format(fmt, json)
    if form is Format.json:
        sys.stdout.write(reports.to_json_text(rep))
    elif form is Format.csv:
        sys.stdout.write(reports.to_csv(rep))
    elif form is Format.tsv:
        import csv
        import io

        for row in csv.reader(io.StringIO(reports.to_csv(rep))):
            sys.stdout.write("\t".join(" ".join(v.replace("\t", " ").splitlines()) for v in row) + "\n")
    else:
        _print_table(rep)


# when the terminal is narrow, these go first (highest first); the group, cost and requests stay
_DROP = {"cached": 6, "cache hits": 5, "saved (USD)": 4, "completion": 3, "prompt": 2, "errors": 1}


def _print_table(rep: Report) -> None:
    from .. import reports
    from .tables import Column, emit

    headers, body, total = reports.table_rows(rep)
    first_number = 2 if rep.has_names else 1
    def cell(i: int) -> Callable[[list[str]], str]:
        return lambda r: r[i]

    columns = [Column(h, cell(i), keep=i == 0 or i >= first_number, right=i >= first_number,
                      drop=_DROP.get(h, 0)) for i, h in enumerate(headers)]
    sys.stdout.write(reports.table_title(rep) + "\n\n")
    emit(columns, [*body, total], Format.table, total=True)
