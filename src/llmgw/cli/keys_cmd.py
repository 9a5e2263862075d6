"""``llmgw keys``: virtual keys (minimal: create and list; governance adds the rest)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .common import HomeOpt, JsonOpt, open_db, print_json, resolve_home

app = typer.Typer(help="Create and list virtual keys.", no_args_is_help=True)


@app.command()
def create(
    home: HomeOpt = None,
    name: Annotated[str | None, typer.Option(help="A unique name for the key.")] = None,
) -> None:
    """Create a virtual key; prints the secret once on stdout (only its hash is stored)."""
    from ..governance.keys import mint

    conn = open_db(resolve_home(home))
    try:
        secret, _ = mint(conn, name=name)
    finally:
        conn.close()
    sys.stdout.write(secret + "\n")


@app.command("list")
def list_(home: HomeOpt = None, json: JsonOpt = False) -> None:
    """List virtual keys (secrets are never shown, only their last 4 characters)."""
    from ..governance.keys import list_keys

    conn = open_db(resolve_home(home))
    try:
        rows = list_keys(conn)
    finally:
        conn.close()
    if json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "key", "status", "customer", "created")
    for r in rows:
        table.add_row(r["id"], r["name"] or "", r["display"], r["status"], r["customer_id"] or "", r["created_at"])
    Console().print(table)
