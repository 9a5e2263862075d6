"""Exporting raw ledger rows: CSV, JSON Lines or Parquet, streamed, for keeping history elsewhere.

Owns ``export`` (``llmgw ledger export``) and the column list it writes.

Invariants:
- Rows go out in ``(ts_ms, id)`` order in pages of ``PAGE`` rows, each page its own short read
  (keyset pagination on the ``ts_ms`` index): memory stays flat and a long export never pins an old
  WAL snapshot while the daemon writes.
- Values are written as stored: integers stay integers (``cost_nanos`` exact), NULL is an empty CSV
  cell, JSON ``null`` or a Parquet null. ``ts`` (ISO-8601 UTC) and ``cost_usd`` (exact decimal)
  are added for people; bodies only when asked.
- Parquet needs ``pyarrow`` (the ``parquet`` extra); without it the export fails before writing
  anything, with the install hint.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterator
from typing import IO, Any

import orjson

from ..errors import UsageError
from ..units import iso_utc, usd
from .ledger import COLUMN_KINDS

FORMATS = ("csv", "jsonl", "parquet")
PAGE = 5_000
BODIES = ("request_body", "response_body")


def columns(bodies: bool) -> list[str]:
    return ["id", *(c for c in COLUMN_KINDS if bodies or c not in BODIES)]


def _pages(conn: sqlite3.Connection, cols: list[str], since_ms: int | None,
           until_ms: int | None) -> Iterator[list[tuple[Any, ...]]]:
    lo = -(2**63) if since_ms is None else since_ms
    hi = 2**63 - 1 if until_ms is None else until_ms
    sel = ", ".join(cols)
    last: tuple[int, int] | None = None
    while True:
        if last is None:
            cur = conn.execute(f"SELECT {sel} FROM ledger WHERE ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms, id"
                               f" LIMIT {PAGE}", (lo, hi))
        else:
            cur = conn.execute(f"SELECT {sel} FROM ledger WHERE ts_ms < ? AND (ts_ms, id) > (?, ?)"
                               f" ORDER BY ts_ms, id LIMIT {PAGE}", (hi, *last))
        page = [tuple(r) for r in cur.fetchall()]
        if not page:
            return
        yield page
        ts, rid = cols.index("ts_ms"), cols.index("id")
        last = (page[-1][ts], page[-1][rid])


def export(conn: sqlite3.Connection, out: IO[bytes], fmt: str, *, since_ms: int | None = None,
           until_ms: int | None = None, bodies: bool = False) -> int:
    """Write the rows with ``since_ms <= ts_ms < until_ms`` to ``out``; returns how many."""
    if fmt not in FORMATS:
        raise UsageError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    cols = columns(bodies)
    if fmt == "parquet":
        return _parquet(_pages(conn, cols, since_ms, until_ms), cols, out)
    ts, cost = cols.index("ts_ms"), cols.index("cost_nanos")
    n = 0
    if fmt == "csv":
        text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        w = csv.writer(text, lineterminator="\n")
        w.writerow([*cols, "ts", "cost_usd"])
        for page in _pages(conn, cols, since_ms, until_ms):
            w.writerows([*("" if v is None else v for v in r), iso_utc(r[ts], millis=True),
                         usd(r[cost], dollar=False)] for r in page)
            n += len(page)
        text.flush()
        text.detach()
        return n
    for page in _pages(conn, cols, since_ms, until_ms):
        out.write(b"".join(orjson.dumps({**dict(zip(cols, r, strict=True)), "ts": iso_utc(r[ts], millis=True),
                                         "cost_usd": usd(r[cost], dollar=False)}) + b"\n" for r in page))
        n += len(page)
    return n


def _parquet(pages: Iterator[list[tuple[Any, ...]]], cols: list[str], out: IO[bytes]) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("--format parquet needs pyarrow: pip install 'llmgw[parquet]'") from None
    kinds = {"int": pa.int64(), "real": pa.float64(), "text": pa.string()}
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False),
                        *(pa.field(c, kinds[COLUMN_KINDS[c]]) for c in cols[1:])])
    n = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as w:
        for page in pages:
            w.write_batch(pa.record_batch([list(col) for col in zip(*page, strict=True)], schema=schema))
            n += len(page)
    return n
