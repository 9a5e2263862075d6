"""Customers and teams: the levels above a virtual key (customer → team → key).

Owns: creating, listing and showing customers and teams; validating their ids.

Invariants:
- An id is the user's own slug (``acme_corp``): ``[a-z0-9][a-z0-9_.-]*``, at most 64 characters.
  It is the stable reference used in budgets, reports and the ledger, so it is never rewritten.
- Customer ids are unique among customers, team ids unique among all teams (a team id alone names
  its team, whatever the customer); a team belongs to exactly one existing customer.
- A malformed id is a ``UsageError``, a duplicate a ``Conflict`` (both ``param="id"``); a reference to
  a missing customer or team is ``NotFound``. Nothing is written when a check fails, and nothing is
  committed: the caller owns the transaction.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from .. import clock, units
from ..errors import Conflict, NotFound, UsageError

SLUG_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
SLUG_MAX = 64


def validate_slug(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid id for a ``kind`` ("customer", "team"), else ``UsageError``."""
    if not isinstance(value, str) or not SLUG_RE.fullmatch(value) or len(value) > SLUG_MAX:
        raise UsageError(f"invalid {kind} id {value!r}: use lowercase letters, digits, '_', '.' and '-', "
                         f"starting with a letter or digit, at most {SLUG_MAX} characters", param="id")
    return value


def _clean_name(name: str | None) -> str | None:
    if name is None:
        return None
    name = name.strip()
    return name or None


# ---- customers ------------------------------------------------------------------------------------


def create_customer(conn: sqlite3.Connection, customer_id: str, *, name: str | None = None) -> dict[str, Any]:
    validate_slug("customer", customer_id)
    if conn.execute("SELECT 1 FROM customers WHERE id = ?", (customer_id,)).fetchone():
        raise Conflict(f"customer {customer_id!r} already exists", param="id")
    conn.execute("INSERT INTO customers (id, name, created_at) VALUES (?, ?, ?)",
                 (customer_id, _clean_name(name), units.iso_utc(clock.now_ms())))
    return get_customer(conn, customer_id)


def get_customer(conn: sqlite3.Connection, customer_id: str, *, param: str | None = None) -> dict[str, Any]:
    """The customer, or ``NotFound`` (about the field ``param``, where it was referenced)."""
    row = conn.execute("SELECT id, name, created_at FROM customers WHERE id = ?", (customer_id,)).fetchone()
    if row is None:
        raise NotFound(f"no customer {customer_id!r} (create it with: llmgw customers create {customer_id})",
                       param=param)
    return dict(row)


def list_customers(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every customer, oldest first, with its number of teams and keys."""
    rows = conn.execute(
        "SELECT c.id, c.name, c.created_at,"
        " (SELECT count(*) FROM teams t WHERE t.customer_id = c.id) AS teams,"
        " (SELECT count(*) FROM keys k WHERE k.customer_id = c.id) AS keys"
        " FROM customers c ORDER BY c.created_at, c.rowid").fetchall()
    return [dict(r) for r in rows]


def show_customer(conn: sqlite3.Connection, customer_id: str) -> dict[str, Any]:
    """A customer with its teams and its keys (public fields only: never a hash or a secret)."""
    out = get_customer(conn, customer_id)
    out["teams"] = list_teams(conn, customer_id=customer_id)
    out["keys"] = [dict(r) for r in conn.execute(
        "SELECT id, name, display, status, team_id, created_at, expires_at FROM keys WHERE customer_id = ?"
        " ORDER BY created_at, rowid", (customer_id,))]
    return out


# ---- teams ----------------------------------------------------------------------------------------


def create_team(conn: sqlite3.Connection, team_id: str, *, customer_id: str,
                name: str | None = None) -> dict[str, Any]:
    validate_slug("team", team_id)
    get_customer(conn, customer_id, param="customer")
    existing = conn.execute("SELECT customer_id FROM teams WHERE id = ?", (team_id,)).fetchone()
    if existing is not None:
        raise Conflict(f"team {team_id!r} already exists (customer {existing['customer_id']!r});"
                       " team ids are unique across customers", param="id")
    conn.execute("INSERT INTO teams (id, customer_id, name, created_at) VALUES (?, ?, ?, ?)",
                 (team_id, customer_id, _clean_name(name), units.iso_utc(clock.now_ms())))
    return get_team(conn, team_id)


def get_team(conn: sqlite3.Connection, team_id: str, *, param: str | None = None) -> dict[str, Any]:
    """The team, or ``NotFound`` (about the field ``param``, where it was referenced)."""
    row = conn.execute("SELECT id, customer_id, name, created_at FROM teams WHERE id = ?", (team_id,)).fetchone()
    if row is None:
        raise NotFound(f"no team {team_id!r} (create it with: llmgw teams create {team_id} --customer C)",
                       param=param)
    return dict(row)


def list_teams(conn: sqlite3.Connection, *, customer_id: str | None = None) -> list[dict[str, Any]]:
    """Teams, oldest first; only those of ``customer_id`` if given (which must exist)."""
    sql = ("SELECT t.id, t.customer_id, t.name, t.created_at,"
           " (SELECT count(*) FROM keys k WHERE k.team_id = t.id) AS keys FROM teams t")
    args: tuple[Any, ...] = ()
    if customer_id is not None:
        get_customer(conn, customer_id, param="customer")
        sql += " WHERE t.customer_id = ?"
        args = (customer_id,)
    return [dict(r) for r in conn.execute(sql + " ORDER BY t.created_at, t.rowid", args)]
