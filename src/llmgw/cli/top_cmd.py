"""``llmgw top``: the live terminal dashboard (Textual, imported only when the command runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import HomeOpt, existing_target, open_existing_db, resolve_home


def top(
    home: HomeOpt = None,
    refresh: Annotated[float, typer.Option("--refresh", min=0.2, max=60.0,
                                           help="Seconds between refreshes.")] = 1.0,
) -> None:
    """Live dashboard: customers' spend against budgets, requests/min, cost per hour, cache hit rate
    and errors, the latest requests, and keys to create keys, set budgets and disable keys.

    Reads the database read-only next to a running daemon; ? lists the keys, q quits."""
    h = resolve_home(home)
    open_existing_db(h).close()  # bring an older database's schema up to date (a no-op otherwise)
    path = existing_target(h)

    from ..tui.app import TopApp

    TopApp(path, refresh=refresh).run()
