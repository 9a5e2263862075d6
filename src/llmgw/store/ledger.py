"""The ledger: one row per request, the source of truth for usage and spend.

Owns: the ledger's column list, row validation (``normalise_row``), the insert statement used by the
single writer, and read/roll-up queries.

Invariants:
- Rows are appended only, by ``store.writer.LedgerWriter`` in the daemon.
- Money is ``cost_nanos``: integer nano-dollars. Integer columns reject floats, so sums are exact.
- A row counts as an error when ``status >= 400`` or ``error_type`` is set (a stream that fails
  after a 200 has ``error_type``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

_INT, _REAL, _TEXT = "int", "real", "text"

# column -> (kind, default when missing; _REQUIRED when NOT NULL without a default)
_REQUIRED = object()
_SCHEMA: dict[str, tuple[str, Any]] = {
    "request_id": (_TEXT, _REQUIRED),
    "ts_ms": (_INT, _REQUIRED),
    "route": (_TEXT, _REQUIRED),
    "model": (_TEXT, None),
    "provider": (_TEXT, None),
    "upstream_model": (_TEXT, None),
    "stream": (_INT, 0),
    "status": (_INT, _REQUIRED),
    "outcome": (_TEXT, _REQUIRED),
    "error_type": (_TEXT, None),
    "error_code": (_TEXT, None),
    "prompt_tokens": (_INT, 0),
    "completion_tokens": (_INT, 0),
    "cached_tokens": (_INT, 0),
    "cache_write_tokens": (_INT, 0),
    "cost_nanos": (_INT, 0),
    "latency_ms": (_REAL, None),
    "ttfb_ms": (_REAL, None),
    "attempts": (_INT, 0),
    "key_id": (_TEXT, None),
    "team_id": (_TEXT, None),
    "customer_id": (_TEXT, None),
    "client_retry": (_INT, None),
    "cache": (_TEXT, None),
    "request_body": (_TEXT, None),
    "response_body": (_TEXT, None),
    "usage_estimated": (_INT, 0),
    "reserved_nanos": (_INT, 0),
    "idempotent_replay": (_INT, 0),
    "cache_similarity": (_REAL, None),
    "saved_nanos": (_INT, 0),
    "cache_entry_id": (_INT, None),
}

LEDGER_COLUMNS: tuple[str, ...] = tuple(_SCHEMA)
"""Insertable columns (all but ``id``), in table order."""

COLUMN_KINDS: dict[str, str] = {c: kind for c, (kind, _) in _SCHEMA.items()}
"""Column -> ``int``, ``real`` or ``text`` (what an export writes it as)."""


_INT64 = 2**63


def _type_ok(kind: str, value: Any) -> bool:
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and -_INT64 <= value < _INT64
    return isinstance(value, int | float)


def normalise_row(row: dict[str, Any]) -> dict[str, Any]:
    """Return a full row (every column of ``LEDGER_COLUMNS``) with defaults filled in.

    Raises ValueError for an unknown column, a missing required column (request_id, ts_ms, route,
    status, outcome) or a value of the wrong type (a float in an integer column included).
    """
    unknown = row.keys() - _SCHEMA.keys()
    if unknown:
        raise ValueError(f"unknown ledger column(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for col, (kind, default) in _SCHEMA.items():
        value = row.get(col)
        if value is None:
            if default is _REQUIRED:
                raise ValueError(f"ledger column {col!r} is required")
            value = default
        elif not _type_ok(kind, value):
            raise ValueError(f"ledger column {col!r} expects {kind}, got {type(value).__name__}")
        out[col] = value
    return out


def insert_sql() -> str:
    """``INSERT`` with positional parameters in ``LEDGER_COLUMNS`` order; feed it ``as_tuple`` output
    (positional binding is measurably cheaper than named binding in the writer)."""
    cols = ", ".join(LEDGER_COLUMNS)
    params = ", ".join("?" for _ in LEDGER_COLUMNS)
    return f"INSERT INTO ledger ({cols}) VALUES ({params})"


_DEFAULTS: tuple[tuple[str, Any], ...] = tuple(
    (col, None if default is _REQUIRED else default) for col, (_, default) in _SCHEMA.items()
)


def as_tuple(row: dict[str, Any]) -> tuple[Any, ...]:
    """The row as insert parameters, defaults filled in, *without* validation: for rows the daemon
    builds itself on the hot path (tests check those rows against ``normalise_row``)."""
    get = row.get
    return tuple(d if (v := get(c)) is None else v for c, d in _DEFAULTS)


def _where(since_ms: int | None, until_ms: int | None) -> tuple[str, dict[str, int]]:
    clauses, params = [], {}
    if since_ms is not None:
        clauses.append("ts_ms >= :since_ms")
        params["since_ms"] = since_ms
    if until_ms is not None:
        clauses.append("ts_ms < :until_ms")
        params["until_ms"] = until_ms
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def rows(
    conn: sqlite3.Connection,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Ledger rows with ``since_ms <= ts_ms < until_ms``, oldest first.

    With ``limit``, the *latest* ``limit`` rows (still returned oldest first), as ``tail`` wants.
    """
    where, params = _where(since_ms, until_ms)
    sql = f"SELECT * FROM ledger{where} ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = limit
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in reversed(cur.fetchall())]


def count(conn: sqlite3.Connection) -> int:
    """Number of ledger rows."""
    return int(conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0])
