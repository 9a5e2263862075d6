"""``llmgw customers``: the customers keys, teams and budgets belong to."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .common import HomeOpt, JsonOpt, err, open_existing_db, print_json, resolve_home, writing
from .tables import Column, FormatOpt, emit, pick_format

app = typer.Typer(help="Create, list and show customers.", no_args_is_help=True)

IdArg = Annotated[str, typer.Argument(metavar="ID", help="The customer's id, your own slug (e.g. acme_corp).")]


@app.command()
def create(
    customer_id: IdArg,
    home: HomeOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="A display name, e.g. \"Acme Corp\".")] = None,
) -> None:
    """Create a customer (ids: lowercase letters, digits, '_', '.', '-')."""
    from ..governance.hierarchy import create_customer

    with writing(resolve_home(home)) as conn:
        row = create_customer(conn, customer_id, name=name)
    err(f"created customer {row['id']}")


@app.command("list")
def list_(home: HomeOpt = None, fmt: FormatOpt = None, json: JsonOpt = False) -> None:
    """List customers with their number of teams and keys."""
    from ..governance.hierarchy import list_customers

    form = pick_format(fmt, json)
    conn = open_existing_db(resolve_home(home))
    try:
        rows = list_customers(conn)
    finally:
        conn.close()
    emit([Column("id", lambda r: r["id"], keep=True), Column("name", lambda r: r["name"] or ""),
          Column("teams", lambda r: str(r["teams"]), right=True, drop=3),
          Column("keys", lambda r: str(r["keys"]), right=True, drop=1),
          Column("created", lambda r: r["created_at"], keep=True, drop=2, key="created_at")], rows, form)


@app.command()
def show(customer_id: IdArg, home: HomeOpt = None, json: JsonOpt = False) -> None:
    """Show a customer with its teams and keys (never a secret)."""
    from ..governance.hierarchy import show_customer

    conn = open_existing_db(resolve_home(home))
    try:
        doc = show_customer(conn, customer_id)
    finally:
        conn.close()
    if json:
        print_json(doc)
        return
    out = sys.stdout
    out.write(f"id: {doc['id']}\nname: {doc['name'] or ''}\ncreated_at: {doc['created_at']}\n")
    out.write(f"teams: {len(doc['teams'])}\n")
    for t in doc["teams"]:
        out.write(f"  {t['id']}" + (f"  {t['name']}" if t["name"] else "") + f"  ({t['keys']} keys)\n")
    out.write(f"keys: {len(doc['keys'])}\n")
    for k in doc["keys"]:
        out.write(f"  {k['id']}  {k['name'] or ''}  {k['display']}  {k['status']}"
                  + (f"  team={k['team_id']}" if k["team_id"] else "") + "\n")
