"""``llmgw teams``: teams group a customer's keys (a team belongs to one customer)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import HomeOpt, JsonOpt, err, open_existing_db, print_json, resolve_home, writing

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
    json: JsonOpt = False,
) -> None:
    """List teams with their customer and number of keys."""
    from ..governance.hierarchy import list_teams

    conn = open_existing_db(resolve_home(home))
    try:
        rows = list_teams(conn, customer_id=customer)
    finally:
        conn.close()
    if json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "customer", "name", "keys", "created")
    for r in rows:
        table.add_row(r["id"], r["customer_id"], r["name"] or "", str(r["keys"]), r["created_at"])
    Console().print(table)
