"""``llmgw teams``: teams group a customer's keys (a team belongs to one customer)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import HomeOpt, JsonOpt, err, open_existing_db, resolve_home, writing
from .tables import Column, FormatOpt, emit, pick_format

app = typer.Typer(help="Create and list teams.", no_args_is_help=True)


@app.command()
def create(
    team_id: Annotated[str, typer.Argument(metavar="ID", help="The team's id, a slug unique across customers.")],
    customer: Annotated[str, typer.Option("--customer", help="The customer the team belongs to.")],
    home: HomeOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="A display name.")] = None,
) -> None:
    """Create a team under a customer."""
    from ..governance.hierarchy import create_team

    with writing(resolve_home(home)) as conn:
        row = create_team(conn, team_id, customer_id=customer, name=name)
    err(f"created team {row['id']} (customer {row['customer_id']})")


@app.command("list")
def list_(
    home: HomeOpt = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer's teams.")] = None,
    fmt: FormatOpt = None,
    json: JsonOpt = False,
) -> None:
    """List teams with their customer and number of keys."""
    from ..governance.hierarchy import list_teams

    form = pick_format(fmt, json)
    conn = open_existing_db(resolve_home(home))
    try:
        rows = list_teams(conn, customer_id=customer)
    finally:
        conn.close()
    emit([Column("id", lambda r: r["id"], keep=True),
          Column("customer", lambda r: r["customer_id"], keep=True, drop=3, key="customer_id"),
          Column("name", lambda r: r["name"] or ""), Column("keys", lambda r: str(r["keys"]), right=True, drop=1),
          Column("created", lambda r: r["created_at"], keep=True, drop=2, key="created_at")], rows, form)
