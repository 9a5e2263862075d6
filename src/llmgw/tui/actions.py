"""The write side of ``llmgw top``: create a key, set a customer budget, disable or enable a key.

Each action parses the form's strings, opens a short-lived writable connection, calls the same
governance function as the CLI and the admin API (``keys.mint``, ``budgets.upsert_budget``,
``keys.set_status``) and closes it, so the rules are the CLI's and a running daemon picks the change
up through its definitions reload. Failures are ``LlmgwError`` (``UsageError``, ``NotFound``) for the
app to show as a notification. No Textual here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import units
from ..errors import UsageError
from ..governance import budgets, keys
from ..store import db
from ..store.conn import PgStore, Target


@contextmanager
def writable(path: Target) -> Iterator[sqlite3.Connection]:
    """A connection for one action in one write transaction (committed when the action succeeds, rolled
    back if it fails), closed afterwards; the database must exist."""
    if isinstance(path, PgStore):
        conn = db.connect(path)
        try:
            with db.transaction(conn):
                yield conn
        finally:
            conn.close()
        return
    if not Path(path).exists():
        from ..errors import NotFound

        raise NotFound(f"no database at {path}")
    conn = db.connect(Path(path))
    try:
        with db.transaction(conn):
            yield conn
    finally:
        conn.close()


def _opt(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def create_key(path: Target, *, customer: str | None, team: str | None = None, name: str | None = None,
               models: str | None = None, budget_usd: str | None = None,
               period: str | None = None) -> tuple[str, dict[str, Any]]:
    """Mint a key for ``customer`` (or its ``team``); ``models`` is a comma-separated allow-list,
    ``budget_usd`` an optional hard budget per ``period`` (default month). Returns the secret (to be
    shown once) and the key's public fields."""
    customer, team, name = _opt(customer), _opt(team), _opt(name)
    if customer is None and team is None:
        raise UsageError("give the key a customer (or a team)")
    model_text = _opt(models)
    model_list = [m.strip() for m in model_text.split(",")] if model_text is not None else None
    budget = _opt(budget_usd)
    nanos = units.parse_usd(budget, "budget") if budget is not None else None
    with writable(path) as conn:
        secret, info = keys.mint(conn, name=name, customer_id=customer, team_id=team, models=model_list,
                                 budget_nanos=nanos, budget_period=_opt(period) if nanos is not None else None)
        return secret, keys.get_key(conn, info.id)


def set_budget(path: Target, scope: str, scope_id: str, *, limit_usd: str, period: str | None = "month",
               warn_pct: str | None = None, hard: bool | None = None) -> tuple[dict[str, Any], bool]:
    """Create or update the budget of a customer, team or key for ``period``; returns the row and
    whether it was created (``budgets.upsert_budget``: an update keeps the id and unset options)."""
    limit = _opt(limit_usd)
    if limit is None:
        raise UsageError("give a limit in USD, e.g. 200 or 12.50")
    nanos = units.parse_usd(limit, "limit")
    p = (_opt(period) or "month").lower()
    warn: int | None = None
    if _opt(warn_pct) is not None:
        try:
            warn = int(str(warn_pct).strip().rstrip("%"))
        except ValueError:
            raise UsageError(f"warn at: expected a percent from 1 to 100, got {warn_pct!r}") from None
    with writable(path) as conn:
        row, created = budgets.upsert_budget(conn, scope, scope_id, p, nanos, hard=hard, warn_pct=warn)
        return dict(row), created


def set_key_status(path: Target, key_id: str, status: str) -> dict[str, Any]:
    """Disable (``disabled``) or re-enable (``active``) a key; a revoked key stays revoked."""
    with writable(path) as conn:
        return keys.set_status(conn, key_id, status)
