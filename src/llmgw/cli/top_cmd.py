"""``llmgw top``: the live terminal dashboard (Textual, imported only when the command runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import HomeOpt, resolve_home


def top(
    home: HomeOpt = None,
    refresh: Annotated[float, typer.Option("--refresh", min=0.2, max=60.0,
                                           help="Seconds between refreshes.")] = 1.0,
) -> None:
    """Live dashboard: customers' spend against budgets, requests/min, cost per hour, cache hit rate
    and errors, the latest requests, and keys to create keys, set budgets and disable keys.

    Reads the database read-only next to a running daemon; ? lists the keys, q quits."""
    from .. import paths
    from ..errors import NotFound
    from ..store import db

    path = paths.db_path(resolve_home(home))
    if not path.exists():
        raise NotFound(f"no database at {path}: nothing recorded yet (check --home / $LLMGW_HOME)")
    db.open_db(path).close()  # bring an older database's schema up to date (a no-op otherwise)

    from ..tui.app import TopApp

    TopApp(path, refresh=refresh).run()
