"""``llmgw ledger``: roll-ups, retention and export of the ledger's history.

``rollup`` catches up, rebuilds or verifies the hourly and daily roll-ups every report reads;
``prune`` deletes old raw rows (their roll-ups stay, so no report changes) or erases old logged
bodies, and gives the space back; ``export`` streams raw rows as CSV, JSON Lines or Parquet, so
history can be kept elsewhere before it is pruned. Safe next to a running daemon: every write is a
short transaction.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import HomeOpt, JsonOpt, err, open_existing_db, open_readonly, print_json, resolve_home

app = typer.Typer(help="Ledger history: roll-ups, retention (prune) and export.", no_args_is_help=True)


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def _status(conn: Any) -> dict[str, Any]:
    from ..store import retention, rollups
    from ..units import iso_utc

    first, last, rows = conn.execute("SELECT MIN(ts_ms), MAX(ts_ms), COUNT(*) FROM ledger").fetchone()
    pruned = rollups.pruned_before(conn)
    bodies = rollups.meta(conn, rollups.META_BODIES_PRUNED)
    return {
        "raw_rows": int(rows), "oldest": iso_utc(first) if first is not None else None,
        "newest": iso_utc(last) if last is not None else None,
        "rolled_up_to_id": rollups.rolled_up_to(conn), "pending": rollups.pending(conn),
        "hourly_rows": int(conn.execute(f"SELECT COUNT(*) FROM {rollups.TABLES['hour']}").fetchone()[0]),
        "daily_rows": int(conn.execute(f"SELECT COUNT(*) FROM {rollups.TABLES['day']}").fetchone()[0]),
        "pruned_before": iso_utc(pruned) if pruned is not None else None,
        "bodies_pruned_before": iso_utc(bodies) if bodies else None,
        "database_bytes": retention.file_bytes(conn), "auto_vacuum": retention.auto_vacuum(conn),
    }


@app.command("rollup")
def rollup(
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Recompute the roll-ups of every day that still has "
                                                            "raw rows (pruned days keep theirs).")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Check that each day's roll-ups equal the raw SUM of "
                                                          "its rows; exit 1 on any difference.")] = False,
    json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Roll up any pending rows, optionally rebuild or verify, and print the ledger's status.

    Reports, budget spend and `llmgw top` read hourly and daily roll-ups (raw rows only at the partial
    hours of a window's edges). The daemon keeps them current and catches up at start; this command
    is for checking them, or rebuilding after restoring raw rows from a backup.
    """
    from ..store import rollups
    from ..store.db import transaction
    from ..units import iso_utc

    conn = open_existing_db(resolve_home(home))
    try:
        rollups.catch_up(conn)
        if rebuild:
            with transaction(conn):
                since = rollups.rebuild(conn)
            err(f"rebuilt the roll-ups from {'the first row' if not since else iso_utc(since)}")
        mismatches = rollups.verify(conn) if verify else []
        status = _status(conn)
    finally:
        conn.close()
    if verify:
        status["verified"] = not mismatches
        status["mismatches"] = [str(m) for m in mismatches]
    if json:
        print_json(status)
    else:
        for k, v in status.items():
            if k == "mismatches":
                continue
            sys.stdout.write(f"{k:<22} {_mib(v) if k == 'database_bytes' else '-' if v is None else v}\n")
        for m in mismatches:
            err(f"mismatch: {m}")
    if mismatches:
        raise typer.Exit(1)


@app.command("prune")
def prune(
    before: Annotated[str, typer.Option("--before", help="Delete raw rows before this UTC date (YYYY-MM-DD, "
                                                         "a past day).")],
    bodies: Annotated[bool, typer.Option("--bodies", help="Only erase the logged request/response bodies of "
                                                          "those rows; the rows stay.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    vacuum: Annotated[bool, typer.Option("--vacuum", help="On a database created before llmgw shrank files "
                                                          "incrementally: convert it with one full VACUUM "
                                                          "(holds the write lock while it runs).")] = False,
    json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Delete raw ledger rows before a date, keeping their roll-ups (past reports do not change).

    Runs in short transactions next to a running daemon, then gives the space back (incremental
    vacuum). Export the rows first (`llmgw ledger export --until DATE`) to keep them elsewhere.
    `[ledger] retain_days` and `[log] bodies_retain_days` do the same daily inside the daemon.
    """
    from .. import clock
    from ..errors import UsageError
    from ..store import retention
    from ..units import iso_utc, parse_time

    before_ms = parse_time(before, "--before")
    now = clock.now_ms()
    retention.check_boundary(before_ms, now)
    what = "logged bodies of the ledger rows" if bodies else "raw ledger rows"
    conn = open_existing_db(resolve_home(home))
    try:
        if not dry_run and not yes:
            if not sys.stdin.isatty():
                raise UsageError("--yes: required to prune without a terminal to confirm on")
            if not typer.confirm(f"Delete the {what} before {iso_utc(before_ms)[:10]}?", err=True):
                raise typer.Exit(1)
        if bodies:
            n = retention.prune_bodies(conn, before_ms, dry_run=dry_run)
            size = retention.db_bytes(conn)
            result = retention.PruneResult(before_ms, 0, n, size, size, dry_run)
        else:
            result = retention.prune_rows(conn, before_ms, now, dry_run=dry_run)
        shrunk = retention.reclaim(conn, full=vacuum) if not dry_run else False
        result.bytes_after = retention.db_bytes(conn) if not dry_run else result.bytes_after
        mode = retention.auto_vacuum(conn)
    finally:
        conn.close()
    n = result.bodies if bodies else result.rows
    if json:
        print_json({**result.as_json(), "file_shrinks": shrunk})
        return
    verb = ("would erase the bodies of" if bodies else "would delete") if dry_run else (
        "erased the bodies of" if bodies else "deleted")
    err(f"{verb} {n} raw ledger row(s) before {iso_utc(before_ms)[:10]}")
    if not dry_run:
        err(f"data: {_mib(result.bytes_before)} -> {_mib(result.bytes_after)}")
        if not shrunk and mode != "incremental":
            err("the freed pages are reused, but this older database file does not shrink by itself:"
                " run once with --vacuum at a quiet moment to convert it")


class Format(StrEnum):
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"


@app.command("export")
def export(
    since: Annotated[str | None, typer.Option("--since", help="Start (inclusive), ISO-8601 date or date-time, "
                                                             "UTC unless an offset is given. Default: the first row.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="End (exclusive). Default: now.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="csv, jsonl (one JSON object per line) or parquet "
                                                         "(needs the parquet extra).")] = Format.csv,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout "
                                                                        "(required for parquet on a terminal).")] = None,
    bodies: Annotated[bool, typer.Option("--bodies", help="Include logged request/response bodies.")] = False,
    home: HomeOpt = None,
) -> None:
    """Stream raw ledger rows, oldest first, with every column as stored (cost in integer
    nano-dollars) plus `ts` (ISO-8601 UTC) and `cost_usd` (exact)."""
    from ..errors import UsageError
    from ..store import export as ex
    from ..units import parse_time

    s = parse_time(since, "--since") if since is not None else None
    u = parse_time(until, "--until") if until is not None else None
    if s is not None and u is not None and s >= u:
        raise UsageError(f"--since ({since}) must be before --until ({until})")
    if output is None and fmt is Format.parquet and sys.stdout.isatty():
        raise UsageError("--output: parquet is binary; give a file (or redirect stdout)")
    conn = open_readonly(resolve_home(home))
    try:
        if output is None:
            n = ex.export(conn, sys.stdout.buffer, fmt.value, since_ms=s, until_ms=u, bodies=bodies)
            sys.stdout.buffer.flush()
        else:
            with output.open("wb") as f:
                n = ex.export(conn, f, fmt.value, since_ms=s, until_ms=u, bodies=bodies)
    finally:
        conn.close()
    err(f"exported {n} row(s)" + (f" to {output}" if output else ""))
